"""Model folders and what is read from them: checkpoints (safetensors without loading a model),
modeling (loading models, tokenizers, adapters), gguf (import), anchor (V = W_aligned - W_base),
generate (greedy generation)."""
