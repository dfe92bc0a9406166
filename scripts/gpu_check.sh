#!/usr/bin/env bash
# The GPU check of a `--features cuda` build, writing one JSON. Run it on a machine with an
# NVIDIA GPU (the binary may be built elsewhere: see scripts/setup_cuda.sh); `--device cpu` is
# its dry run, which CI runs (tests/gpu_check.rs).
#
#   scripts/gpu_check.sh [--device cuda|cuda:N|cpu] [--out FILE] [--model-dir SNAPSHOT] [--quick]
#
# What it measures, per item in the JSON:
#   invariance  `equirun check` for every wrapper over rot90, hflip, vflip, rot180, rot90xflip on
#               the built-in tiny ViT and ModifiedResNet CLIPs in f32 (exit 0 = every equivariant
#               method within 1e-5), with CPU-f32 parity of features and probabilities
#               (`--compare-cpu`; bound 1e-4 in f32);
#   snapshot    with --model-dir (any CLIP snapshot with a tokenizer, e.g. a random ViT-B/32 from
#               scripts/make_random_clip.py): the same in f32 and f16 (f16: the measured bounds
#               are reported, invariance tolerance 1e-2), and `bench-clip` at batch 1 and 32 in
#               f32 and f16;
#   not_covered what this build cannot run on a GPU yet (those subcommands are CPU-only).
# Environment: EQUIRUN_BIN (default target/release/equirun).
set -euo pipefail
cd "$(dirname "$0")/.."
device=cuda
out=gpu_check.json
model_dir=""
quick=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --model-dir) model_dir=$2; shift 2 ;;
    --quick) quick=1; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
bin="${EQUIRUN_BIN:-target/release/equirun}"
if [ ! -x "$bin" ]; then
  echo "gpu_check: no equirun binary at $bin: build it (cargo build --release --features cuda) or set EQUIRUN_BIN" >&2
  exit 2
fi
if [ -n "$model_dir" ] && [ ! -d "$model_dir" ]; then
  echo "gpu_check: --model-dir $model_dir is not a folder" >&2
  exit 2
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0

# run NAME ARGS...: runs equirun, keeps its JSON stdout (or an error object) in $tmp/NAME.json.
run() {
  local name=$1; shift
  local rc=0
  "$bin" "$@" >"$tmp/$name.out" 2>"$tmp/$name.err" || rc=$?
  if [ "$rc" = 0 ] && [ -s "$tmp/$name.out" ]; then
    cp "$tmp/$name.out" "$tmp/$name.json"
  else
    failures=$((failures + 1))
    local msg
    msg=$(tail -3 "$tmp/$name.err" | tr '\n"\\' '   ')
    printf '{"exit_code": %s, "error": "%s"}' "$rc" "$msg" >"$tmp/$name.json"
  fi
  echo "gpu_check: $name: exit $rc" >&2
}

groups="rot90 hflip vflip rot180 rot90xflip"
[ "$quick" = 1 ] && groups="rot90 rot90xflip"
items=()
for backbone in vit resnet; do
  for g in $groups; do
    n="invariance_${backbone}_${g}_f32"
    run "$n" check --device "$device" --backbone "$backbone" --group "$g" --compare-cpu --json
    items+=("$n")
  done
done
if [ -n "$model_dir" ]; then
  for dt in f32 f16; do
    tol=1e-5; [ "$dt" = f16 ] && tol=1e-2
    n="snapshot_rot90xflip_$dt"
    run "$n" check --device "$device" --dtype "$dt" --model-dir "$model_dir" --group rot90xflip \
      --tolerance "$tol" --compare-cpu --json --batch 2
    items+=("$n")
    for bs in 1 32; do
      [ "$quick" = 1 ] && [ "$bs" = 32 ] && continue
      n="bench_clip_${dt}_b$bs"
      run "$n" bench-clip --device "$device" --dtype "$dt" --model-dir "$model_dir" --batch-size "$bs"
      items+=("$n")
    done
  done
fi

{
  printf '{\n  "device": "%s",\n  "equirun": "%s",\n' "$device" "$("$bin" --version | tr -d '"')"
  printf '  "gpu": "%s",\n' "$( (nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo none) | head -1 | tr -d '"')"
  printf '  "date": "%s",\n  "failures": %d,\n  "results": {\n' "$(date -u +%FT%TZ)" "$failures"
  sep=""
  for n in "${items[@]}"; do
    printf '%s    "%s": %s' "$sep" "$n" "$(cat "$tmp/$n.json")"
    sep=$',\n'
  done
  printf '\n  },\n  "not_covered": ["bench-lm and GPT-2/BERT/seq2seq parity, clip finetune, scan finetune, cnn, multi-image and regard on the GPU: those subcommands run on the CPU in f32 only in this build"]\n}\n'
} >"$out.tmp"
mv "$out.tmp" "$out"
echo "gpu_check: wrote $out ($failures failed)" >&2
[ "$failures" = 0 ]
