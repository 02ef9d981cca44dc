"""Model cards: templates in model_cards/ rendered for adapters, bias vectors and debiased models."""
