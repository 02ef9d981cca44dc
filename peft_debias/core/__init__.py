"""Core: the error type, atomic outputs and strict JSON, provenance (versions, timestamps, fingerprints), data folders.

Imports nothing else of the package.
"""
