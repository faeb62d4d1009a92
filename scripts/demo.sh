#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh), then builds a two-path emulated network
# and runs a transfer you can watch. Extra arguments go to the demo (--help).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup.sh"
exec "$ROOT/.venv/bin/python" -m mptun.demo "$@"
