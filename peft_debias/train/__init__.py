"""Training: the config, the objectives registry, the one training loop, and the artifacts it writes."""
