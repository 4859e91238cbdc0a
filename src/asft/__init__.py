"""asft: safety-preserving LoRA fine-tuning of aligned LLMs (AsFT, arXiv 2506.08473)."""

__version__ = "0.1.0"
