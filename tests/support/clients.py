"""Shared pieces of the client tests (tests/test_clients*.py): which clients work on the installed versions, the
published adapters' training commands, and how a fresh client process reports back.

Each client process prints one JSON line (its last line of output); :func:`report` runs it and reads that line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from support.hub_server import run_client


def transformers_adapter_api_problem() -> str | None:
    """Why ``model.load_adapter(repo)`` (transformers' own adapter API) cannot work here, or None when it can.

    transformers 5.24 and later refuse it unless PEFT >= 0.22.0 is installed (0.22 is not released while peft
    0.21.2 is pinned); 5.23 with peft 0.21 works.
    """
    import peft
    import transformers
    from packaging.version import Version

    if Version(transformers.__version__) >= Version("5.24") and Version(peft.__version__) < Version("0.22.0"):
        return (
            f"transformers {transformers.__version__} refuses model.load_adapter with peft {peft.__version__} "
            "(it needs PEFT >= 0.22.0): pin transformers<5.24 or use PeftModel.from_pretrained (README)"
        )
    return None


def require_client(module: str) -> None:
    """Skip the test when an optional client library (the ``clients`` extra) is missing; under CI, fail instead:
    the pinned install has it, so a CI run must not pass by skipping."""
    import importlib.util

    import pytest

    from support.bundled import under_ci

    if importlib.util.find_spec(module) is not None:
        return
    message = f"{module} is not installed (pip install 'peft-debias[clients]')"
    if under_ci():
        pytest.fail(f"{message}; CI is set, so the client tests may not be skipped", pytrace=False)
    pytest.skip(message)


def report(args: list[str], env: dict[str, str], timeout: float = 300) -> dict[str, Any]:
    """Run a client process and return the JSON object on its last line of output; fail with its stderr."""
    run = run_client(args, env, timeout=timeout)
    assert run.returncode == 0, f"client failed ({run.returncode}):\n{run.stderr[-4000:]}"
    return json.loads(run.stdout.strip().splitlines()[-1])


def train_argv(
    base: str, output: Path, corpus: Path, method: str = "lora", steps: int = 3, lr: float = 0.05
) -> list[str]:
    """``peft-debias train`` arguments for a quick adapter on ``base`` (a Hub id here, as a user would give it)."""
    return [
        "train", "--base", base, "--corpus", str(corpus), "--output", str(output), "--method", method,
        "--max-steps", str(steps), "--batch-size", "4", "--lr", str(lr), "--seed", "1",
        "--eval-every", "0", "--save-every", "0", "--no-progress",
    ]  # fmt: skip


# One process trains (and publishes) several artifacts through the CLI's entry point: argv lists in sys.argv[1].
BATCH_CLI = r"""
import json, sys
from peft_debias.cli.main import main
codes = [main(argv) for argv in json.loads(sys.argv[1])]
print(json.dumps(codes))
"""
