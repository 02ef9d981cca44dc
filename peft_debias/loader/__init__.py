"""Downstream use of debiasing adapters: attach (freeze / merge / inference), adapter checks, merge to a folder."""
