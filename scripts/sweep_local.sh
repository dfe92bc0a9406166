#!/usr/bin/env bash
# Runs a sweep config on this machine, then tabulates and plots everything under the results root.
#   scripts/sweep_local.sh configs/clip-exp0.toml [JOBS] [extra `equirun sweep` flags...]
# Rerun the same line after an interruption (Ctrl-C, kill -9, reboot): finished runs are kept and
# skipped, the rest continue. `equirun sweep CONFIG --dry-run` shows the commands first.
set -euo pipefail
cd "$(dirname "$0")/.."
config=${1:?usage: scripts/sweep_local.sh CONFIG [JOBS] [equirun sweep flags...]}
jobs=${2:-1}
shift $(( $# >= 2 ? 2 : 1 ))
equirun=${EQUIRUN:-target/release/equirun}
[ -x "$equirun" ] || cargo build --release
out=$(sed -n 's/^out *= *"\(.*\)"/\1/p' "$config" | head -1)
out=${out:-results}
args=("$@")
for ((i = 0; i + 1 < ${#args[@]}; i++)); do if [ "${args[i]}" = --out ]; then out=${args[i + 1]}; fi; done
status=0
"$equirun" sweep "$config" --jobs "$jobs" "$@" || status=$?
if [ -d "$out" ]; then
  "$equirun" report "$out" >/dev/null
  echo "report: $out/report/report.md"
fi
exit $status
