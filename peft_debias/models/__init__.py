"""Models: loading (bundled aliases, Hub ids, local folders) and the PEFT method registry."""
