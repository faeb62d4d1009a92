#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh) and runs the whole test suite, as root.
# Extra arguments go to pytest, e.g. scripts/test.sh -k lab -x
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m pytest -p no:cacheprovider "$@"
