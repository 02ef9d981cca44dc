"""Progress bars on the command line: the CLI's own bars only, none from transformers ("Loading weights").

The commands run in a subprocess whose environment does not switch any library's bars off, so the CLI has to do
it; the terminal cases give the command a pseudo-terminal as stderr, where our own bars (tty-only by default) and
transformers' bars would both be drawn.
"""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e  # the CLI in a separate process, on a terminal and through a pipe

LIBRARY_BARS = "Loading weights"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_DISABLE_PROGRESS_BARS")}
    return {**env, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _run(args: list[str], *, terminal: bool) -> tuple[int, str, str]:
    """Run ``peft-debias ARGS``; returns (exit code, stdout, stderr), stderr a pseudo-terminal if ``terminal``."""
    argv = [sys.executable, "-m", "peft_debias", *args]
    if not terminal:
        result = subprocess.run(argv, capture_output=True, text=True, env=_env(), timeout=300)
        return result.returncode, result.stdout, result.stderr
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # tqdm draws nothing in 0 columns
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=slave, env=_env()) as proc:
        os.close(slave)
        chunks = []
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the command has exited and closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        os.close(master)
        stdout = proc.stdout.read() if proc.stdout else b""
        code = proc.wait(timeout=300)
    return code, stdout.decode(), b"".join(chunks).decode(errors="replace")


@pytest.fixture(scope="module")
def eval_args(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    text = tmp_path_factory.mktemp("ppl") / "text.txt"
    text.write_text("The doctor said that he was late for work. " * 100)
    model = str(tiny_models["llama"])
    return ["eval", "--model", model, "--benchmarks", "perplexity", "--ppl-file", str(text), "--ppl-max-tokens", "200"]


def test_own_bars_stay_library_bars_do_not_print(eval_args: list[str]) -> None:
    code, stdout, stderr = _run(eval_args, terminal=True)
    assert code == 0, stderr
    assert "perplexity:" in stdout
    assert "perplexity" in stderr and "%|" in stderr  # our own bar, drawn on a terminal
    assert LIBRARY_BARS not in stderr


def test_no_progress_silences_every_bar(eval_args: list[str]) -> None:
    code, _, stderr = _run([*eval_args, "--no-progress"], terminal=True)
    assert code == 0, stderr
    assert "%|" not in stderr and LIBRARY_BARS not in stderr


@pytest.mark.parametrize("terminal", [False, True])
def test_error_after_the_model_loads_is_one_line(eval_args: list[str], tmp_path: Path, terminal: bool) -> None:
    """The model loads (weights and all) before the adapter folder is found wanting: stderr is the error alone."""
    code, _, stderr = _run([*eval_args, "--adapter", str(tmp_path)], terminal=terminal)
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1, stderr
    assert lines[0].startswith("peft-debias: error: adapter folder") and "no adapter_config.json" in lines[0]
