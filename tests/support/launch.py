"""``accelerate launch`` with two real CPU ranks, for the tests that run a script in several processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_two_ranks(
    script: str | Path,
    *args: str,
    cwd: Path,
    timeout: int = 600,
    config_file: Path | None = None,
    module: bool = False,
) -> subprocess.CompletedProcess:
    """Run ``script args`` under ``accelerate launch`` as two gloo ranks on the CPU (``--cpu --num_processes 2``
    silently runs ONE process; ``--multi_gpu`` with ``ACCELERATE_USE_CPU`` gives two), the repository importable.
    ``config_file``: an accelerate config (two processes, not ``use_cpu``) instead of the ``--multi_gpu`` flags;
    ``module``: ``script`` is a module name (``peft_debias``), run as ``python -m``."""
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    if config_file is None:
        command += ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]
        command += ["--dynamo_backend", "no"]
    else:
        command += ["--config_file", str(config_file)]
    command += ["--main_process_port", str(free_port()), *(["-m"] if module else []), str(script), *args]
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout, cwd=cwd)
