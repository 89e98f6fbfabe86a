#!/usr/bin/env bash
# THE test command (CI runs it through .ci/run): installs what is missing (scripts/setup.sh), checks
# the shipped deployment files, then runs every Rust test with cargo-nextest. Exits non-zero if
# anything failed; every step runs even after a failure, so one run shows every problem.
#
#   scripts/test.sh [extra nextest arguments, e.g. a test name filter]

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/setup.sh
source scripts/setup.sh

FAILED_STEPS=()

# step NAME COMMAND...: runs COMMAND, records a failure instead of stopping.
step() {
    local name=$1
    shift
    echo "== $name"
    if "$@"; then
        echo "-- ok: $name"
    else
        echo "-- FAILED: $name"
        FAILED_STEPS+=("$name")
    fi
}

check_compose() {
    if docker compose version >/dev/null 2>&1; then
        docker compose -f docker-compose.yml config -q
    elif command -v docker-compose >/dev/null 2>&1; then
        # Debian's docker-compose 1.29 validates against the Compose specification schema and
        # needs no Docker engine for `config`.
        docker-compose -f docker-compose.yml config -q
    else
        /usr/bin/python3 -c 'import sys, yaml; yaml.safe_load(open(sys.argv[1]))' docker-compose.yml
    fi
    # Every file the stack mounts or builds from must exist.
    /usr/bin/python3 - <<'PY'
import os, sys, yaml
compose = yaml.safe_load(open("docker-compose.yml"))
missing = []
for name, service in compose["services"].items():
    for volume in service.get("volumes", []):
        source = volume.split(":", 1)[0]
        if source.startswith("./") and not os.path.exists(source):
            missing.append(f"{name}: {source}")
    if "build" in service and not os.path.exists("Dockerfile"):
        missing.append(f"{name}: Dockerfile")
for path in ["Cargo.toml", "Cargo.lock", "build.rs", "proto", "src", "clamgate.toml"]:
    if not os.path.exists(path):
        missing.append(f"Dockerfile COPY: {path}")
if missing:
    sys.exit("missing files: " + ", ".join(missing))
PY
}

step "envoy/envoy.yaml passes envoy --mode validate" \
    "$ENVOY_BIN" --mode validate -l warning -c envoy/envoy.yaml
step "envoy/istio-envoyfilter.yaml fragments validate and match envoy.yaml" \
    /usr/bin/python3 scripts/check-istio-fragments.py "$ENVOY_BIN"
step "docker-compose.yml parses" check_compose

# nginx -t on each shipped nginx config, with the clamgate-*.conf snippets beside it as documented.
check_nginx() {
    local nginx_bin dir file status=0
    nginx_bin="${NGINX_BIN:-$(command -v nginx || echo /usr/sbin/nginx)}"
    for file in nginx.conf mirror.conf; do
        dir="$(mktemp -d)"
        mkdir -p "$dir/clamgate" "$dir/tmp"
        cp "nginx/$file" "$dir/nginx.conf"
        cp nginx/clamgate-server.conf nginx/clamgate-location.conf nginx/clamgate-verdict.conf "$dir/clamgate/"
        "$nginx_bin" -t -q -p "$dir" -c "$dir/nginx.conf" || { echo "nginx -t failed for nginx/$file"; status=1; }
        rm -rf "$dir"
    done
    return "$status"
}
step "nginx/nginx.conf and nginx/mirror.conf pass nginx -t" check_nginx
step "shell scripts parse" bash -c 'for f in scripts/*.sh .ci/run; do bash -n "$f" || exit 1; done'
# The soak with chaos (docs/reliability.md), 5 rounds of every fault (about 6 minutes): any wrong
# answer, unrecovered fault or leak fails the run. SOAK_ROUNDS=0 skips it.
if [[ "${SOAK_ROUNDS:-5}" != 0 ]]; then
    step "soak with chaos, ${SOAK_ROUNDS:-5} rounds (scripts/soak.sh)" \
        bash scripts/soak.sh --rounds "${SOAK_ROUNDS:-5}"
fi
# The fuzz targets (fuzz/, cargo fuzz on the nightly toolchain) for a bounded time each; a crash
# fails the run. FUZZ_SECONDS=0 skips them (e.g. to run one test quickly).
if [[ "${FUZZ_SECONDS:-30}" != 0 ]]; then
    step "fuzz targets, ${FUZZ_SECONDS:-30} s each (scripts/fuzz.sh)" bash scripts/fuzz.sh
fi

if ((${#FAILED_STEPS[@]})); then
    printf 'test.sh: FAILED: %s\n' "${FAILED_STEPS[@]}"
fi

# Last and unwrapped, so that nextest's summary closes the output.
echo "== cargo nextest run"
status=0
cargo nextest run --no-fail-fast "$@" || status=$?
if ((${#FAILED_STEPS[@]})); then
    exit 1
fi
exit "$status"
