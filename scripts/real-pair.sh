#!/usr/bin/env bash
# A real base/aligned pair, its anchor and the numbers that matter, on CPU:
#   bash scripts/real-pair.sh smollm2     # SmolLM2-135M-Instruct (chat model, chat template)
#   bash scripts/real-pair.sh gemma3      # Gemma 3 270M (pre-trained: instruction + safety tuning, alpaca)
# Every step is skipped when its output exists (rerun to resume). Needs scripts/get-real-models.sh first.
#   1. asft align: full fine-tuning to refuse the harmful requests of the training pools (never the
#      250 HS prompts); benign requests keep the model's own answers (smollm2) or learn the pool's
#      answers (gemma3, which has no chat skills of its own)
#   2. asft anchor + --inspect: the real alignment direction and the spectrum of the reference C
#   3. asft eval: HS (keyword judge, 250 prompts) and SST-2 zero-shot FA of both models
# Outputs in ${ASFT_RUNS:-runs}/<model>-pair. ALIGN_ARGS replaces the recipe by one stage; threads via
# ASFT_THREADS.
source "$(dirname "$0")/_env.sh"
which=${1:-smollm2}
models=${ASFT_MODELS:-$HOME/.cache/asft/models}
ref=${ASFT_REFERENCE:-$(cd .. && pwd)/shared/data/asft-reference}
# A recipe is one or more `asft align` stages, each continuing from the previous one's model (seed
# differs, so each stage draws its own batches, refusal wordings and benign answers).
case $which in
  # SmolLM2: one stage at 3e-4 (322 steps, 29 min with its answers) in place of the earlier three at 1e-4 (483 + 320 + 148 steps,
  # about 2 h on one core): about the same summed step size (AdamW's sum of lr over steps), a third of
  # the steps. The three-stage recipe, for the record (README, "Aligned pairs"):
  #   "--n-harmful 881 --n-benign 400 --epochs 3 --lr 1e-4 --max-length 256 --seed 0"
  #   "--n-harmful 881 --n-benign 400 --epochs 2 --lr 1e-4 --max-length 256 --seed 1"
  #   "--n-harmful 881 --n-benign 300 --epochs 1 --lr 1e-4 --max-length 256 --seed 2"
  smollm2) base="$models/smollm2-135m-instruct"; template=chat
           stages=("--n-harmful 881 --n-benign 400 --epochs 2 --lr 3e-4 --max-length 256 --seed 0") ;;
  gemma3)  base="$models/gemma3-270m"; template=alpaca
           stages=("--benign-targets data --n-harmful 881 --n-benign 400 --epochs 2 --lr 1e-4 --max-length 192") ;;
  *) echo "usage: $0 smollm2|gemma3" >&2; exit 2 ;;
esac
out=${ASFT_RUNS:-runs}/$which-pair
aligned="$out/aligned"
mkdir -p "$out"
[ -f "$base/config.json" ] || { echo "no $base: run scripts/get-real-models.sh first" >&2; exit 2; }

[ -n "${ALIGN_ARGS:-}" ] && stages=("$ALIGN_ARGS")
from=$base
for i in "${!stages[@]}"; do  # stage k writes aligned-stage<k>, the last one aligned
  to="$aligned-stage$((i + 1))"; [ $((i + 1)) = ${#stages[@]} ] && to=$aligned
  [ -f "$to/align.json" ] || \
    asft align --model "$from" --reference "$ref" --out "$to" --template $template ${stages[$i]}
  from=$to
done
[ -f "$out/anchor.safetensors" ] || asft anchor --base "$base" --aligned "$aligned" --out "$out/anchor.safetensors"
asft anchor --inspect "$out/anchor.safetensors" > "$out/anchor_inspect.txt"
for run in "aligned harmful" "aligned sst2" "original sst2" "original harmful"; do
  set -- $run; dir=$base; [ $1 = aligned ] && dir=$aligned
  # finished suites are reused on a rerun
  asft eval --model "$dir" --suite $2 --template $template --judge keyword --data-dir "$ref/eval" \
            --out "$out/eval-$1" --no-progress
done
tail -n 5 "$out/anchor_inspect.txt"
for m in original aligned; do echo "== $m"; head -6 "$out/eval-$m/summary.md"; done
