#!/usr/bin/env bash
# A real base/aligned pair from SmolLM2-135M-Instruct, its anchor and the numbers that matter, on CPU.
# Every step is skipped when its output exists (rerun to resume). Needs scripts/get-real-models.sh first.
#   1. asft align: full fine-tuning to refuse harmful requests of the training pools (never the 250
#      HS prompts), keeping the model's own answers to benign requests
#   2. asft anchor + --inspect: the real alignment direction and the spectrum of the reference C
#   3. asft eval: HS (keyword judge, 250 prompts) and SST-2 zero-shot FA of both models
# Outputs in ${ASFT_RUNS:-runs}/smollm2-pair. Options for align via ALIGN_ARGS.
source "$(dirname "$0")/_env.sh"
models=${ASFT_MODELS:-$HOME/.cache/asft/models}
ref=${ASFT_REFERENCE:-$(cd .. && pwd)/shared/data/asft-reference}
out=${ASFT_RUNS:-runs}/smollm2-pair
base="$models/smollm2-135m-instruct"
aligned="$out/aligned"
mkdir -p "$out"
[ -f "$base/config.json" ] || { echo "no $base: run scripts/get-real-models.sh first" >&2; exit 2; }

[ -f "$aligned/align.json" ] || \
  asft align --model "$base" --reference "$ref" --out "$aligned" ${ALIGN_ARGS:---n-harmful 500 --n-benign 500 --epochs 2 --lr 5e-5}
[ -f "$out/anchor.safetensors" ] || asft anchor --base "$base" --aligned "$aligned" --out "$out/anchor.safetensors"
asft anchor --inspect "$out/anchor.safetensors" > "$out/anchor_inspect.txt"
for m in original aligned; do
  dir=$base; [ $m = aligned ] && dir=$aligned
  asft eval --model "$dir" --suite harmful --template chat --judge keyword --data-dir "$ref/eval" --out "$out/eval-$m"
  asft eval --model "$dir" --suite sst2 --template chat --judge keyword --data-dir "$ref/eval" --out "$out/eval-$m"
done
tail -n 5 "$out/anchor_inspect.txt"
for m in original aligned; do echo "== $m"; cat "$out/eval-$m/summary.md" | head -6; done
