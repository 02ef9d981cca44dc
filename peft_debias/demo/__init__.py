"""The demo: the main job end to end on the bundled models, offline, with its report."""
