"""Counterfactual data augmentation: bias axes, swap rules, first names, corpora and CDA datasets."""
