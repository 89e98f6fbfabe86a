#!/usr/bin/env bash
# The benchmark (docs/benchmarks.md): installs what is missing (scripts/setup.sh), builds in release
# and runs benches/proxy through cargo bench, passing every argument on.
#
#   scripts/bench.sh                   # the latency scenarios, every size; prints Markdown tables
#   scripts/bench.sh --write-report    # the same, and rewrites their section of docs/benchmarks.md
#   scripts/bench.sh --scenarios large --write-report   # 1/16/256 MiB scanned through Envoy vs
#                                      # direct clamd INSTREAM; rewrites only its own section
#   scripts/bench.sh --help            # every option
#
# The client is the bench's own (Rust, exact percentiles): nothing like wrk is needed.

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/setup.sh
source scripts/setup.sh

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
