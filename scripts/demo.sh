#!/usr/bin/env bash
# The clamgate demo: the whole stack on loopback, then real requests through Envoy.
#
#   clamd :3310 and a unix socket (test signatures from testdata/clamav/)   Redis :6379
#   sample upstream :8080 (scripts/demo_upstream.py)      clamgate :50051 gRPC, :9090 admin
#   Envoy :10000 with the shipped envoy/envoy.yaml, admin :9901
#   nginx :8088 with the shipped nginx/nginx.conf, asking clamgate's HTTP listener :8181
#
# Shows: a clean download passes byte-identical with x-clamgate-verdict: clean; an EICAR download
# and an EICAR upload get 409 (upstream never stores the upload); a multipart form carrying a file
# known only by its hash gets 409 naming the part; a clean upload passes; a client's
# forged x-clamgate-verdict header changes nothing; a gRPC caller without the shared token (one
# posing as Envoy) is refused with UNAUTHENTICATED; with clamgate stopped, Envoy answers 503.
# Through nginx: a clean download fetched and scanned on a miss (200), then answered from the cache;
# an infected one 409; an infected upload 409 (nginx sends uploads through Envoy); with clamgate
# stopped, nginx answers 503.
# The shared token is random, made at start, given to clamgate (listen.grpc_token_file) and to
# Envoy (a copy of envoy/envoy.yaml with the token in place of its placeholder).
# Prints PASS/FAIL per check and exits non-zero on any failure. Every process is stopped on exit.
#
# Usage: scripts/demo.sh [--keep] [--without-clamgate]
#   --keep               leave the stack running after the checks, until Ctrl-C
#   --without-clamgate   start everything but clamgate: shows Envoy failing closed (503)

set -euo pipefail

KEEP=0
WITH_CLAMGATE=1
for arg in "$@"; do
    case "$arg" in
        --keep) KEEP=1 ;;
        --without-clamgate) WITH_CLAMGATE=0 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "demo: unknown option $arg (try --help)" >&2; exit 64 ;;
    esac
done

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/setup.sh
source scripts/setup.sh

CLAMD_PORT=3310
REDIS_PORT=6379
UPSTREAM_PORT=8080
GRPC_PORT=50051
ADMIN_PORT=9090
ENVOY_PORT=10000
ENVOY_ADMIN_PORT=9901
NGINX_PORT=8088
HTTP_PORT=8181
START_TIMEOUT_SECS=60

log() { echo "demo: $*"; }
die() { echo "demo: ERROR: $*" >&2; exit 1; }

# --- processes -----------------------------------------------------------------------------------
WORK="$(mktemp -d /tmp/clamgate-demo.XXXXXX)"
NAMES=()
PIDS=()
FAILED=0

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    local i
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        if kill -0 "${PIDS[i]}" 2>/dev/null; then
            log "stopping ${NAMES[i]} (pid ${PIDS[i]})"
            kill -TERM "${PIDS[i]}" 2>/dev/null || true
        fi
    done
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        local deadline=$((SECONDS + 10))
        while kill -0 "${PIDS[i]}" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
        kill -KILL "${PIDS[i]}" 2>/dev/null || true
        wait "${PIDS[i]}" 2>/dev/null || true
    done
    if ((status != 0 || FAILED)); then
        log "logs kept in $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$status"
}
trap cleanup EXIT
# Ctrl-C ends a --keep run normally; anything else interrupted is a failure.
trap 'exit $((KEEP && !FAILED ? 0 : 130))' INT
trap 'exit 143' TERM

# start NAME LOGFILE COMMAND...: runs COMMAND in the background, remembering its pid.
start() {
    local name=$1 logfile=$2
    shift 2
    log "starting $name: $*"
    "$@" >"$logfile" 2>&1 &
    PIDS+=("$!")
    NAMES+=("$name")
}

# wait_for NAME WHAT CHECK...: polls CHECK until it succeeds; fails if NAME's process exits or
# the deadline passes.
wait_for() {
    local name=$1 what=$2
    shift 2
    local deadline=$((SECONDS + START_TIMEOUT_SECS)) i pid=""
    for i in "${!NAMES[@]}"; do [[ "${NAMES[i]}" == "$name" ]] && pid=${PIDS[i]}; done
    until "$@" >/dev/null 2>&1; do
        if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
            tail -n 30 "$WORK/$name.log" >&2 || true
            die "$name exited during startup (log: $WORK/$name.log)"
        fi
        if ((SECONDS >= deadline)); then
            tail -n 30 "$WORK/$name.log" >&2 || true
            die "$name: not $what after ${START_TIMEOUT_SECS}s (log: $WORK/$name.log)"
        fi
        sleep 0.2
    done
    log "$name: $what"
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# tcp_says PORT SEND EXPECT: sends SEND on a fresh connection, succeeds if the reply has EXPECT.
# The server must close the connection after its reply. In a subshell: a failed `exec`
# redirection must not end the script.
tcp_says() (
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf '%b' "$2" >&3
    reply="$(timeout 2 cat <&3 || true)"
    [[ "$reply" == *"$3"* ]]
)

http_ok() { curl -fsS -o /dev/null --max-time 2 "$1"; }

envoy_clamgate_healthy() {
    curl -fsS --max-time 2 "http://127.0.0.1:$ENVOY_ADMIN_PORT/clusters" |
        grep -q "^clamgate::127.0.0.1:$GRPC_PORT::health_flags::healthy$"
}

# --- preflight -----------------------------------------------------------------------------------
ports=("$CLAMD_PORT" "$REDIS_PORT" "$UPSTREAM_PORT" "$ENVOY_PORT" "$ENVOY_ADMIN_PORT" "$NGINX_PORT")
((WITH_CLAMGATE)) && ports+=("$GRPC_PORT" "$ADMIN_PORT" "$HTTP_PORT")
for port in "${ports[@]}"; do
    port_in_use "$port" && die "127.0.0.1:$port is in use; the demo needs ports ${ports[*]}"
done
for file in clamd.conf test.ndb test.hdb test.ldb; do
    [[ -f "testdata/clamav/$file" ]] || die "missing testdata/clamav/$file"
done

if ((WITH_CLAMGATE)); then
    log "building clamgate (release)"
    cargo build --release --bin clamgate
fi
log "work dir: $WORK"

# --- the shared token Envoy sends to clamgate ----------------------------------------------------
# Random for each run; only this script, clamgate and Envoy (files mode 600) ever see it.
umask 077
GRPC_TOKEN="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
printf '%s\n' "$GRPC_TOKEN" >"$WORK/grpc-token"
sed -e "s|REPLACE_WITH_CLAMGATE_GRPC_TOKEN|$GRPC_TOKEN|" envoy/envoy.yaml >"$WORK/envoy.yaml"
grep -q "Bearer $GRPC_TOKEN" "$WORK/envoy.yaml" || die "envoy/envoy.yaml has no token placeholder"
# And the one nginx sends to clamgate's HTTP listener (x-clamgate-token).
HTTP_TOKEN="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
printf '%s\n' "$HTTP_TOKEN" >"$WORK/http-token"
NGINX_DIR="$WORK/nginx"
mkdir -p "$NGINX_DIR/clamgate" "$NGINX_DIR/tmp"
cp nginx/nginx.conf "$NGINX_DIR/nginx.conf"
for file in clamgate-server.conf clamgate-location.conf clamgate-verdict.conf; do
    sed -e "s|REPLACE_WITH_CLAMGATE_HTTP_TOKEN|$HTTP_TOKEN|" "nginx/$file" >"$NGINX_DIR/clamgate/$file"
done
grep -q "$HTTP_TOKEN" "$NGINX_DIR/clamgate/clamgate-server.conf" || die "nginx/clamgate-server.conf has no token placeholder"
umask 022

# --- clamd ---------------------------------------------------------------------------------------
# The template wants {{DIR}} holding db/ (signatures) and tmp/ (spooled bodies).
CLAMAV_DIR="$WORK/clamav"
mkdir -p "$CLAMAV_DIR/db" "$CLAMAV_DIR/tmp"
cp testdata/clamav/test.ndb testdata/clamav/test.hdb testdata/clamav/test.ldb "$CLAMAV_DIR/db/"
sed -e "s|{{PORT}}|$CLAMD_PORT|g" -e "s|{{DIR}}|$CLAMAV_DIR|g" testdata/clamav/clamd.conf >"$CLAMAV_DIR/clamd.conf"
# clamd is on this host: clamgate uses its unix socket and hands it the held bodies' file
# descriptors (FILDES, clamd.scan_method = "auto"); TCP stays open for the readiness check.
echo "LocalSocket $CLAMAV_DIR/clamd.sock" >>"$CLAMAV_DIR/clamd.conf"
start clamd "$WORK/clamd.log" "$CLAMD_BIN" --foreground --config-file="$CLAMAV_DIR/clamd.conf"

# --- Redis ---------------------------------------------------------------------------------------
mkdir -p "$WORK/redis"
start redis "$WORK/redis.log" "$REDIS_SERVER_BIN" --bind 127.0.0.1 --port "$REDIS_PORT" \
    --save "" --appendonly no --dir "$WORK/redis" --daemonize no

# --- sample upstream -----------------------------------------------------------------------------
WWW="$WORK/www"
mkdir -p "$WWW"
printf 'This file is clean. It passes clamgate unchanged.\n' >"$WWW/clean.txt"
# The EICAR test string, assembled here so that no file in the repository holds it whole.
EICAR_1='X5O!P%@AP[4\PZX54(P^)7CC)7}'
EICAR_2='$EICAR-STANDARD-ANTIVIRUS'
EICAR_3='-TEST-FILE!$H+H*'
printf '%s%s%s' "$EICAR_1" "$EICAR_2" "$EICAR_3" >"$WWW/eicar.com"
start upstream "$WORK/upstream.log" /usr/bin/python3 scripts/demo_upstream.py \
    --bind 127.0.0.1 --port "$UPSTREAM_PORT" --dir "$WWW"

wait_for clamd "answers PING" tcp_says "$CLAMD_PORT" 'zPING\0' PONG
wait_for redis "answers PING" tcp_says "$REDIS_PORT" 'PING\r\nQUIT\r\n' PONG
wait_for upstream "serves /healthz" http_ok "http://127.0.0.1:$UPSTREAM_PORT/healthz"

# --- clamgate ------------------------------------------------------------------------------------
if ((WITH_CLAMGATE)); then
    cat >"$WORK/clamgate.toml" <<EOF
# clamgate config written by scripts/demo.sh
[listen]
grpc_addr = "127.0.0.1:$GRPC_PORT"
admin_addr = "127.0.0.1:$ADMIN_PORT"
# Only a caller with this token (Envoy) may open ext_proc streams or call the Scan API.
grpc_token_file = "$WORK/grpc-token"
# nginx's auth_request endpoint (GET /v1/auth), for callers with this token only.
http_addr = "127.0.0.1:$HTTP_PORT"
http_token_file = "$WORK/http-token"

[clamd]
# The unix socket of the clamd on this host: bodies go by descriptor (FILDES), not copied.
address = "unix://$CLAMAV_DIR/clamd.sock"

[cache]
redis_url = "redis://127.0.0.1:$REDIS_PORT"

# Where clamgate downloads an object nginx asks about and the cache does not know (on_miss).
[fetch]
origins = ["127.0.0.1 = http://127.0.0.1:$UPSTREAM_PORT"]

# envoy/envoy.yaml routes /mirror/ with this policy (gRPC metadata x-clamgate-policy: mirror), and
# nginx/nginx.conf its location /mirror/.
[policies.mirror]
cache_mode = "resource"
on_miss = "fetch"
EOF
    # As the Dockerfile runs it: two glibc malloc arenas (README, "Running it").
    start clamgate "$WORK/clamgate.log" env MALLOC_ARENA_MAX=2 target/release/clamgate serve --config "$WORK/clamgate.toml"
    wait_for clamgate "ready (/readyz 200)" http_ok "http://127.0.0.1:$ADMIN_PORT/readyz"
fi

# --- Envoy ---------------------------------------------------------------------------------------
# --disable-hot-restart: no shared memory left in /dev/shm. This script stays Envoy's parent until
# it stops it (a shell that exits right away would take Envoy down with it).
start envoy "$WORK/envoy.log" "$ENVOY_BIN" -c "$WORK/envoy.yaml" --disable-hot-restart \
    --log-level warning
wait_for envoy "ready (admin /ready 200)" http_ok "http://127.0.0.1:$ENVOY_ADMIN_PORT/ready"
((WITH_CLAMGATE)) && wait_for envoy "sees clamgate healthy (gRPC health check)" envoy_clamgate_healthy

# --- nginx ---------------------------------------------------------------------------------------
# The shipped nginx/nginx.conf, its prefix in the work dir (pid, temp files), in the foreground.
NGINX_BIN="${NGINX_BIN:-$(command -v nginx || echo /usr/sbin/nginx)}"
start nginx "$WORK/nginx.log" "$NGINX_BIN" -p "$NGINX_DIR" -c "$NGINX_DIR/nginx.conf" -g 'daemon off;'
wait_for nginx "accepts connections" port_in_use "$NGINX_PORT"

# --- checks --------------------------------------------------------------------------------------
RESULTS=()
pass() { RESULTS+=("PASS  $1"); log "PASS: $1"; }
fail() { RESULTS+=("FAIL  $1"); log "FAIL: $1"; FAILED=1; }

# request NAME CURL-ARGS...: sets STATUS, BODY (file) and HEADERS (file) for the request.
request() {
    local name=$1
    shift
    BODY="$WORK/$name.body"
    HEADERS="$WORK/$name.headers"
    : >"$BODY"
    : >"$HEADERS"
    # curl prints 000 itself when there is no answer.
    STATUS="$(curl -sS --max-time 60 -o "$BODY" -D "$HEADERS" -w '%{http_code}' "$@")" || true
}
header() { grep -i "^$1:" "$HEADERS" | head -n 1 | cut -d: -f2- | tr -d ' \r'; }
ENVOY="http://127.0.0.1:$ENVOY_PORT"
NGINX="http://127.0.0.1:$NGINX_PORT"

if ((WITH_CLAMGATE)); then
    echo
    log "GET /clean.txt"
    request clean "$ENVOY/clean.txt"
    if [[ "$STATUS" == 200 ]] && cmp -s "$BODY" "$WWW/clean.txt" && [[ "$(header x-clamgate-verdict)" == clean ]]; then
        pass "GET /clean.txt: 200, byte-identical, x-clamgate-verdict: clean"
    else
        fail "GET /clean.txt: status $STATUS, verdict '$(header x-clamgate-verdict)', body $(cmp -s "$BODY" "$WWW/clean.txt" && echo identical || echo DIFFERENT)"
    fi

    log "GET /eicar.com"
    request eicar "$ENVOY/eicar.com"
    echo "    $(cat "$BODY")"
    if [[ "$STATUS" == 409 ]] && grep -q '"verdict":"infected"' "$BODY"; then
        pass "GET /eicar.com: 409 with the infected verdict"
    else
        fail "GET /eicar.com: status $STATUS (expected 409)"
    fi

    log "GET /eicar.com again, with a forged x-clamgate-verdict: clean header"
    request eicar-forged -H 'x-clamgate-verdict: clean' -H 'x-clamgate-policy: allow' "$ENVOY/eicar.com"
    if [[ "$STATUS" == 409 ]]; then
        pass "GET /eicar.com with forged x-clamgate-* headers: still 409"
    else
        fail "GET /eicar.com with forged x-clamgate-* headers: status $STATUS (expected 409)"
    fi

    log "POST /upload/eicar.com (an infected upload)"
    request upload-eicar --data-binary "@$WWW/eicar.com" -H 'content-type: application/octet-stream' "$ENVOY/upload/eicar.com"
    echo "    $(cat "$BODY")"
    if [[ "$STATUS" == 409 && ! -e "$WWW/uploads/eicar.com" ]]; then
        pass "POST infected upload: 409, never stored by the upstream"
    else
        fail "POST infected upload: status $STATUS, stored upstream: $([[ -e "$WWW/uploads/eicar.com" ]] && echo YES || echo no)"
    fi

    log "POST /upload/form (a browser-style multipart form carrying a file known only by its hash)"
    # testdata/clamav/test.hdb names this exact 2048-byte file (Test.HashOnly): clamd finds it only
    # when the file is scanned alone, so clamgate scans every part of a form as its own file.
    /usr/bin/python3 - "$WORK/invoice.exe" <<'PY'
import sys
mask, state, out = (1 << 64) - 1, 0x4841_5348_4F4E_4C59, b""
while len(out) < 2048:
    state = (state + 0x9E3779B97F4A7C15) & mask
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    out += (z ^ (z >> 31)).to_bytes(8, "little")
open(sys.argv[1], "wb").write(out[:2048])
PY
    request upload-form -F note=quarterly -F "file=@$WORK/invoice.exe" "$ENVOY/upload/form"
    echo "    $(cat "$BODY")"
    if [[ "$STATUS" == 409 ]] && grep -q '"part"' "$BODY" && [[ ! -e "$WWW/uploads/form" ]]; then
        pass "POST multipart form with a hash-signed file: 409 naming the part, never stored"
    else
        fail "POST multipart form with a hash-signed file: status $STATUS"
    fi

    log "PUT /upload/report.txt (a clean upload)"
    printf 'quarterly report: nothing to see here\n' >"$WORK/report.txt"
    request upload-clean -X PUT --data-binary "@$WORK/report.txt" "$ENVOY/upload/report.txt"
    echo "    $(cat "$BODY")"
    if [[ "$STATUS" == 201 ]] && cmp -s "$WORK/report.txt" "$WWW/uploads/report.txt"; then
        pass "PUT clean upload: 201, stored byte-identical"
    else
        fail "PUT clean upload: status $STATUS"
    fi

    echo
    log "nginx: GET /mirror/clean.txt (not in the cache: clamgate fetches it from the origin and scans it)"
    request nginx-fetch "$NGINX/mirror/clean.txt"
    if [[ "$STATUS" == 200 ]] && cmp -s "$BODY" "$WWW/clean.txt" && [[ "$(header x-clamgate-verdict)" == clean ]]; then
        pass "nginx GET /mirror/clean.txt (fetch on miss): 200, byte-identical, x-clamgate-verdict: clean"
    else
        fail "nginx GET /mirror/clean.txt (fetch on miss): status $STATUS, verdict '$(header x-clamgate-verdict)'"
    fi
    log "nginx: GET /mirror/clean.txt again (answered from the verdict cache)"
    request nginx-hit "$NGINX/mirror/clean.txt"
    if [[ "$STATUS" == 200 ]] && cmp -s "$BODY" "$WWW/clean.txt"; then
        pass "nginx GET /mirror/clean.txt (cache hit): 200, byte-identical"
    else
        fail "nginx GET /mirror/clean.txt (cache hit): status $STATUS"
    fi
    log "nginx: GET /mirror/eicar.com"
    request nginx-eicar "$NGINX/mirror/eicar.com"
    echo "    $(cat "$BODY")"
    if [[ "$STATUS" == 409 ]] && grep -q '"verdict":"infected"' "$BODY"; then
        pass "nginx GET /mirror/eicar.com: 409 with the infected verdict"
    else
        fail "nginx GET /mirror/eicar.com: status $STATUS (expected 409)"
    fi
    log "nginx: POST /upload/eicar2.com (nginx sends uploads through Envoy)"
    request nginx-upload --data-binary "@$WWW/eicar.com" "$NGINX/upload/eicar2.com"
    if [[ "$STATUS" == 409 && ! -e "$WWW/uploads/eicar2.com" ]]; then
        pass "nginx POST infected upload: 409, never stored by the upstream"
    else
        fail "nginx POST infected upload: status $STATUS"
    fi

    # clamd is on this host: clamgate gave it the bodies' file descriptors rather than the bytes.
    fildes="$(curl -fsS "http://127.0.0.1:$ADMIN_PORT/metrics" | grep '^clamgate_clamd_scans_started_total{method="fildes"}' | awk '{print $2}' || true)"
    if [[ -n "$fildes" && "${fildes%%.*}" -gt 0 ]]; then
        pass "clamd on this host scanned the held bodies by descriptor (FILDES): $fildes scans"
    else
        fail "no FILDES scan counted (clamgate_clamd_scans_started_total{method=\"fildes\"}: '${fildes}')"
    fi

    # A direct gRPC caller posing as Envoy, without the token: refused before clamgate reads a
    # message (a trailers-only answer, grpc-status 16), so it cannot write a verdict.
    log "ext_proc stream straight to clamgate, without the token"
    request forged --http2-prior-knowledge -X POST -H 'content-type: application/grpc' -H 'te: trailers' \
        --data-binary '' "http://127.0.0.1:$GRPC_PORT/envoy.service.ext_proc.v3.ExternalProcessor/Process"
    if [[ "$(header grpc-status)" == 16 ]]; then
        pass "gRPC caller without the token: UNAUTHENTICATED (grpc-status 16)"
    else
        fail "gRPC caller without the token: grpc-status '$(header grpc-status)' (expected 16)"
    fi
fi

summary() {
    local passed failed
    echo
    log "summary:"
    ((${#RESULTS[@]})) && printf '    %s\n' "${RESULTS[@]}"
    passed=$(printf '%s\n' "${RESULTS[@]}" | grep -c '^PASS' || true)
    failed=$(printf '%s\n' "${RESULTS[@]}" | grep -c '^FAIL' || true)
    echo "demo: $passed passed, $failed failed"
}

if ((KEEP)); then
    summary
    echo
    log "the stack is running (Ctrl-C to stop it):"
    log "  curl -i $ENVOY/clean.txt          curl -i $ENVOY/eicar.com"
    log "  curl -i --data-binary @FILE $ENVOY/upload/NAME"
    log "  curl -i $NGINX/mirror/clean.txt  curl -i $NGINX/mirror/eicar.com   (nginx, auth_request)"
    ((WITH_CLAMGATE)) && log "  clamgate admin: http://127.0.0.1:$ADMIN_PORT/metrics"
    log "  Envoy admin: http://127.0.0.1:$ENVOY_ADMIN_PORT/   logs: $WORK"
    # Returns when any process of the stack exits; Ctrl-C runs the cleanup trap instead.
    wait -n || true
    die "a process of the stack exited; logs in $WORK"
fi

# Fail closed: with no clamgate, Envoy answers 503 and the upstream is never asked.
if ((WITH_CLAMGATE)); then
    log "stopping clamgate to show Envoy failing closed"
    for i in "${!NAMES[@]}"; do
        if [[ "${NAMES[i]}" == clamgate ]]; then
            kill -TERM "${PIDS[i]}" 2>/dev/null || true
            wait "${PIDS[i]}" 2>/dev/null || true
        fi
    done
fi
before="$(grep -c '"GET /clean.txt' "$WORK/upstream.log" || true)"
log "GET /clean.txt with clamgate down"
request down "$ENVOY/clean.txt"
after="$(grep -c '"GET /clean.txt' "$WORK/upstream.log" || true)"
if [[ "$STATUS" == 503 && "$before" == "$after" ]]; then
    pass "GET with clamgate down: 503 from Envoy, upstream not called"
else
    fail "GET with clamgate down: status $STATUS (expected 503), upstream calls $before -> $after"
fi
log "nginx: GET /mirror/clean.txt with clamgate down"
request nginx-down "$NGINX/mirror/clean.txt"
if [[ "$STATUS" == 503 ]]; then
    pass "nginx GET with clamgate down: 503"
else
    fail "nginx GET with clamgate down: status $STATUS (expected 503)"
fi

summary
((FAILED == 0))
