"""Helpers shared by the tests (no tests here): tiny models, small data folders, a local Hub server, and so on.

Test modules import them as ``from support.<module> import ...``; pytest puts ``tests/`` on ``sys.path``.
"""
