#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ (cargo fuzz, libFuzzer, the nightly toolchain) for a bounded
# time each, starting from the corpus in fuzz/corpus/ (kept between runs, not committed).
#
#   scripts/fuzz.sh              # 30 s per target
#   FUZZ_SECONDS=600 scripts/fuzz.sh state_machine decode
#
# Installs cargo-fuzz from crates.io when it is missing. A crash stops the run with the input
# saved under fuzz/artifacts/TARGET/; reproduce it with `cargo +nightly fuzz run TARGET FILE`,
# and keep it as a regression test.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SECONDS_PER_TARGET="${FUZZ_SECONDS:-30}"
TARGETS=("$@")
if ((${#TARGETS[@]} == 0)); then
    TARGETS=(clamd_reply decode multipart config state_machine)
fi

if ! rustup toolchain list | grep -q '^nightly'; then
    echo "fuzz.sh: the nightly toolchain is needed (rustup toolchain install nightly)" >&2
    exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz"
    cargo install cargo-fuzz --locked --quiet
fi

# No sanitizer: the code the targets reach has no unsafe; libFuzzer still finds panics, failed
# assertions, hangs and runaway memory. `FUZZ_SANITIZER=address` for the C underneath (zstd).
SANITIZER="${FUZZ_SANITIZER:-none}"
cargo +nightly fuzz build -s "$SANITIZER"

status=0
for target in "${TARGETS[@]}"; do
    mkdir -p "fuzz/corpus/$target"
    echo "== fuzz $target for ${SECONDS_PER_TARGET}s"
    if ! cargo +nightly fuzz run -s "$SANITIZER" "$target" "fuzz/corpus/$target" -- \
        -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 2>&1 |
        grep -E 'DONE|Done [0-9]+ runs|stat::|ERROR|panicked|crash-|SUMMARY|Test unit written|^thread'; then
        echo "-- FAILED: fuzz $target"
        status=1
    fi
done
exit "$status"
