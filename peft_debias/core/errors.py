"""The one error type users see.

Every user-facing failure (bad argument, missing file, unknown name) raises :class:`DebiasError` with two
parts: what is wrong and how to fix it. The CLI prints it as one line,
``peft-debias: error: <problem>; <fix>``, and exits with code 2 (see :mod:`peft_debias.cli.main`).
"""

from __future__ import annotations


class DebiasError(Exception):
    """A user error: ``problem`` says what is wrong, ``fix`` says what to do about it."""

    exit_code = 2

    def __init__(self, problem: str, fix: str) -> None:
        self.problem = problem.strip().rstrip(".;")
        self.fix = fix.strip().rstrip(".")
        super().__init__(f"{self.problem}; {self.fix}")


def one_line(text: object, limit: int = 300) -> str:
    """Collapse an arbitrary message (e.g. from a library exception) to one short line."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
