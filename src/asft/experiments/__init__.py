"""Experiments: ``plan`` (a YAML config parsed into runs), ``prepare`` (what the runs need), ``runs``
(train + evaluate one run, resumable, in parallel), ``demo``, ``landscape``."""
