#!/usr/bin/env bash
# Shows that a sweep survives kill -9: starts scripts/sweep_scan_ii_small.sh's sweep, kills the
# whole process group (sweep and its running equirun processes) with SIGKILL once the first
# result exists, lists what is on disk (finished seeds only; no partial JSON, no temp file),
# then reruns the same command, which skips the finished runs and completes the rest.
#   scripts/sweep_kill_resume_demo.sh [OUT=results-killdemo]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-results-killdemo}
equirun=${EQUIRUN:-target/release/equirun}
[ -x "$equirun" ] || cargo build --release
rm -rf "$out"
list() { find "$out" -path "$out/.sweep" -prune -o \( -name 'seed-*.json' -o -name '.tmp-*' \) -print | sort; }
# the small sweep, in its own process group so that one kill -9 takes everything down
setsid bash scripts/sweep_scan_ii_small.sh "$out" 0-2 > "$out.log" 2>&1 &
pid=$!
until [ -n "$(find "$out" -name 'seed-*.json' -not -path '*/.sweep/*' 2>/dev/null)" ]; do sleep 0.2; done
echo "\$ kill -9 -$pid   # the sweep and its running equirun processes"
kill -9 -- "-$pid"
wait "$pid" 2>/dev/null || true
sleep 0.5
echo "--- on disk after kill -9:"
list
echo "--- rerun the same sweep:"
"$equirun" sweep "$out/scan-ii-small.toml" --jobs 2
echo "--- on disk after the rerun:"
list
