"""Training: ``TrainConfig`` (config), the Trainer with the method's term (trainer), ``train`` (what
`asft train` runs), ``merge``, ``align`` (making an aligned model), the adapter's model card (card)."""
