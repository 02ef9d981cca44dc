"""Core: the error type, atomic outputs and strict JSON (``jsonio``), provenance (versions, timestamps, the
``debias_config.json`` sidecar), fingerprints, Hub ids, difflib alignment, data folders.

Imports nothing else of the package.
"""
