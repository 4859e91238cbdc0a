#!/usr/bin/env bash
# The real-model protocol of a pair, end to end, resumable (every run is cached; rerun to continue):
#   bash scripts/real-protocol.sh smollm2|gemma3 [report]
#   1. the safety demonstrations (asft data safety: 500 refusals to harmful requests of the training
#      pools, none of the 250 HS prompts nor of the SST-2 mix's own harmful requests), once
#   2. the runs already in the repository (docs/results/<pair>_sst2_all/answers: rows and answers) are put
#      back in place; `asft experiment` keeps those whose key matches (the same pair, bit for bit)
#      and redoes the others
#   3. asft experiment configs/<pair>_sst2.yaml (skipped with `report`)
#   4. the report of the runs done so far, with both judges, and every run's answers, into
#      docs/results/<pair>_sst2_all (commit it)
# Needs scripts/get-real-models.sh and scripts/real-pair.sh <pair> first. WORKERS (default 1) runs at
# once, threads via ASFT_THREADS.
source "$(dirname "$0")/_env.sh"
which=${1:-smollm2}
case $which in smollm2|gemma3) ;; *) echo "usage: $0 smollm2|gemma3 [report]" >&2; exit 2 ;; esac
ref=${ASFT_REFERENCE:-$(cd .. && pwd)/shared/data/asft-reference}
runs=${ASFT_RUNS:-runs}
results=docs/results/${which}_sst2_all   # every method; docs/results/<pair>_sst2 keeps the earlier protocol
out=$runs/$which-sst2
[ -f "$runs/$which-pair/aligned/align.json" ] || { echo "no aligned model: bash scripts/real-pair.sh $which" >&2; exit 2; }
mkdir -p "$runs"
[ -f "$runs/safety-sst2.json" ] || asft data safety --reference "$ref" --n 500 --out "$runs/safety-sst2.json" \
    --exclude "$ref/train/SST2/SST2_1k_p_0.1.json"
if [ -d "$results/answers" ]; then  # what earlier sessions committed; kept only where the key matches
  # whole folders, in place of unfinished ones (no row.json): a half-made run's key.txt beside a
  # committed row.json would pass for a finished run
  (cd "$results/answers" && find . -name row.json -printf '%h\n') | while read -r run; do
    [ -f "$out/runs/$run/row.json" ] && continue
    rm -rf "${out:?}/runs/$run" && mkdir -p "$(dirname "$out/runs/$run")" && cp -r "$results/answers/$run" "$out/runs/$run"
  done
fi
if [ "${2:-}" != report ]; then
  asft experiment "configs/${which}_sst2.yaml" --out "$out" --workers "${WORKERS:-1}"
fi
asft report "$out/runs" --out "$results" --rejudge keyword-plus --answers \
    --title "$(sed -n 's/^name: //p' "configs/${which}_sst2.yaml")" --paper "$ref/paper-numbers.md"
