#!/usr/bin/env bash
# The soak with chaos (docs/reliability.md): installs what is missing (scripts/setup.sh), builds
# in release and runs benches/soak through cargo bench, passing every argument on. Exits 1 on any
# wrong answer, on a fault the stack does not recover from within 60 s, or on resources left
# behind.
#
#   scripts/soak.sh                                  # 5 rounds, objects up to 8 MiB (the CI run)
#   scripts/soak.sh --rounds 10 --max-object-mib 64 --write-report
#                                                    # the report's run; rewrites its section
#   scripts/soak.sh --help                           # every option

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/setup.sh
source scripts/setup.sh

soak_command="scripts/soak.sh"
for soak_arg in "$@"; do
    soak_command+=" $soak_arg"
done
export SOAK_COMMAND="$soak_command"

exec cargo bench --bench soak -- "$@"
