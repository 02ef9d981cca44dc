"""Where evaluation and training data live: a folder laid out like the project's ``shared/data``.

The package never bundles datasets; a command takes ``--data-dir`` or the ``PEFT_DEBIAS_DATA`` environment
variable.
"""

from __future__ import annotations

import os
from pathlib import Path

from peft_debias.core.errors import DebiasError

DATA_ENV = "PEFT_DEBIAS_DATA"


def resolve_data_dir(given: str | os.PathLike | None = None) -> Path:
    """The data folder from the argument, else ``$PEFT_DEBIAS_DATA``; a clear error if neither exists."""
    value = given or os.environ.get(DATA_ENV)
    if not value:
        raise DebiasError("no data folder given", f"pass --data-dir DIR or set {DATA_ENV}=DIR")
    path = Path(value).expanduser()
    if not path.is_dir():
        raise DebiasError(f"data folder {path} not found", f"pass --data-dir DIR or set {DATA_ENV}=DIR")
    return path


def data_file(data_dir: Path, relative: str) -> Path:
    """A file inside the data folder; a clear error naming the expected location if it is missing."""
    path = data_dir / relative
    if not path.is_file():
        raise DebiasError(
            f"expected data file {path} is missing", f"put {relative} under the data folder, or pass another --data-dir"
        )
    return path
