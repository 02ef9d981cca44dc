"""Bias vectors (Shirafuji et al. 2024): algebra, LoRA vectors, streaming storage and apply, combine, sweep."""
