"""The C-heap helpers: trimming, and the mmap threshold that ``peft-debias eval`` sets (in a child process here, so
that the test session's own allocator is left as it is)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from peft_debias.core.heap import map_large_allocations, release_memory

_SET = "from peft_debias.core.heap import map_large_allocations as m; print(m())"


def test_release_memory_runs() -> None:
    release_memory()
    release_memory()  # glibc loaded once, then reused


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_the_threshold_is_set_in_a_fresh_process() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")}
    out = subprocess.run([sys.executable, "-c", _SET], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "True"


@pytest.mark.parametrize(
    ("key", "value"), [("MALLOC_MMAP_THRESHOLD_", "65536"), ("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=65536")]
)
def test_a_threshold_the_user_set_is_left_alone(monkeypatch: pytest.MonkeyPatch, key: str, value: str) -> None:
    monkeypatch.setenv(key, value)
    assert map_large_allocations() is False
