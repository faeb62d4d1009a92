#!/usr/bin/env bash
# Installs everything mptun needs on a Debian machine, as root, and builds it.
# Idempotent: a second run only checks. Afterwards .venv/bin/mptun is ready.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MPTUN_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

# command -> Debian package that provides it
declare -A DEB=(
    [ip]=iproute2 [tc]=iproute2 [ss]=iproute2 [nft]=nftables [iperf3]=iperf3
    [mptcpize]=mptcpize [ethtool]=ethtool [tshark]=tshark [tcpdump]=tcpdump
    [curl]=curl [gcc]=gcc [ping]=iputils-ping [nstat]=iproute2
)

log() { printf 'mptun setup: %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    log "must run as root (it installs Debian packages and mptun needs CAP_NET_ADMIN)"
    exit 1
fi

missing=()
for cmd in "${!DEB[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("${DEB[$cmd]}")
done
if ! "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    missing+=(python3-venv)
fi
if [ ${#missing[@]} -gt 0 ]; then
    pkgs=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
    log "installing Debian packages: $pkgs"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $pkgs >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
    log "creating virtual environment $VENV"
    "$PYTHON" -m venv "$VENV"
fi

# Rebuild when the compiled sources or the build changed since the last install
# (the install is editable: Python files are used in place).
stamp="$VENV/.mptun-build-stamp"
digest=$(cd "$ROOT" && find pyproject.toml setup.py src -type f \
    \( -name '*.py' -o -name '*.pyx' -o -name '*.pxd' -o -name '*.h' -o -name '*.toml' \) \
    -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$digest" ]; then
    log "installing mptun and its Python dependencies into $VENV"
    buildlog="$VENV/mptun-build.log"
    # --no-build-isolation: build with the venv's Cython/setuptools, so a
    # rebuild needs no download and uses exactly what we installed.
    if ! { "$VENV/bin/python" -m pip install --upgrade pip 'setuptools>=77' wheel 'Cython>=3.0' \
           && "$VENV/bin/python" -m pip install --no-build-isolation -e "$ROOT[test]"; } >"$buildlog" 2>&1; then
        tail -n 40 "$buildlog" >&2
        log "install/build failed; full log: $buildlog"
        exit 1
    fi
    echo "$digest" > "$stamp"
fi

"$VENV/bin/python" -c 'import mptun.impl as i; i.load("buildinfo", "fast")' \
    || { log "the compiled datapath does not import: build failed"; exit 1; }
log "ready: $VENV/bin/mptun"
