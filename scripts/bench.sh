#!/usr/bin/env bash
# The benchmark (docs/benchmarks.md): installs what is missing (scripts/setup.sh), builds in release
# and runs benches/proxy through cargo bench, passing every argument on.
#
#   scripts/bench.sh                   # the latency scenarios, every size; prints Markdown tables
#   scripts/bench.sh --write-report    # the same, and rewrites their section of docs/benchmarks.md
#   scripts/bench.sh --scenarios large --write-report   # 1/16/256 MiB scanned through Envoy vs
#                                      # direct clamd INSTREAM; rewrites only its own section
#   scripts/bench.sh --scenarios baseline,content,noop,miss,peer --sizes 1k,63k
#                                      # clamgate beside the incumbent, squid + c-icap (installed
#                                      # from Debian when `peer` is asked for)
#   scripts/bench.sh --help            # every option
#
# The client is the bench's own (Rust, exact percentiles): nothing like wrk is needed.

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/setup.sh
source scripts/setup.sh

# The incumbent (`peer` among --scenarios): squid, c-icap and its virus_scan module from Debian,
# their services stopped (the bench starts its own instances).
bench_wants_peer=false
bench_next_is_list=false
for bench_arg in "$@"; do
    bench_list=""
    if $bench_next_is_list; then
        bench_list=$bench_arg
    elif [[ $bench_arg == --scenarios=* ]]; then
        bench_list=${bench_arg#--scenarios=}
    fi
    bench_next_is_list=false
    [[ $bench_arg == --scenarios ]] && bench_next_is_list=true
    [[ ",$bench_list," == *,peer,* ]] && bench_wants_peer=true
done
if $bench_wants_peer; then
    setup_apt squid c-icap libc-icap-mod-virus-scan
    setup_stop_services squid c-icap
fi

# The report records the command that produced it, quoted so that it can be pasted back.
bench_quote() {
    if [[ $1 =~ ^[A-Za-z0-9_./,=:+-]+$ ]]; then
        printf '%s' "$1"
    else
        printf "'%s'" "${1//\'/\'\\\'\'}"
    fi
}
PROXY_BENCH_COMMAND="scripts/bench.sh"
for bench_arg in "$@"; do
    PROXY_BENCH_COMMAND+=" $(bench_quote "$bench_arg")"
done
export PROXY_BENCH_COMMAND

exec cargo bench --bench proxy -- "$@"
