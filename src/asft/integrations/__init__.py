"""AsFT inside other training libraries, each imported on use with a clear message when missing:
``asft.integrations.trl`` (TRL's ``SFTTrainer``)."""
