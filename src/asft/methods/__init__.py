"""Fine-tuning methods (placeholder during the move; the registry follows)."""
