#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh) and runs the multipath benchmark, as root: mptun vs the
# kernel's own MPTCP vs plain TCP on the same labs; results.json, PNG plots and a markdown table.
# Arguments go to bench/multipath_bench.py, e.g. scripts/bench.sh --quick --only failover --out DIR
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup.sh"
cd "$ROOT"
exec "${MPTUN_VENV:-$ROOT/.venv}/bin/python" "$ROOT/bench/multipath_bench.py" "$@"
