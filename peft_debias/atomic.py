"""Atomic outputs: write into a temporary sibling, fsync, then rename into place.

A reader of the destination sees either nothing or a complete result, even if the writer is killed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from .errors import DebiasError, one_line

_TMP_MARK = ".tmp-peft-debias-"


def check_destination(dest: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Fail early (before any work) if ``dest`` exists and ``overwrite`` is off, or its parent is unusable."""
    dest = Path(dest)
    if dest.exists() and not overwrite:
        raise DebiasError(f"output {dest} already exists", "pass --overwrite or choose another output path")
    parent = dest.absolute().parent
    if parent.exists() and not parent.is_dir():
        raise DebiasError(f"output parent {parent} is not a folder", "choose an output path inside a folder")
    if parent.exists() and not os.access(parent, os.W_OK | os.X_OK):
        raise DebiasError(f"cannot write to {parent} (permission denied)", "choose a writable output location")
    return dest


def _fsync_tree(path: Path) -> None:
    paths = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for p in paths:
        with open(p, "rb") as fh:
            os.fsync(fh.fileno())
    with contextlib.suppress(OSError):  # directory fsync is not supported everywhere
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _os_error(err: OSError, dest: Path) -> DebiasError:
    if err.errno == errno.ENOSPC:
        return DebiasError(f"no space left on the device while writing {dest}", "free disk space and run again")
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return DebiasError(f"cannot write {dest} ({err.strerror})", "choose a writable output location")
    return DebiasError(f"writing {dest} failed: {one_line(err)}", "check the output location and run again")


@contextlib.contextmanager
def atomic_output(dest: str | os.PathLike, *, overwrite: bool = False, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``dest``; on success move it onto ``dest``, on failure remove it.

    With ``directory=True`` the temporary path is created as an empty folder; otherwise it is a file path that
    does not exist yet. An existing ``dest`` is refused unless ``overwrite`` is true, in which case it is
    replaced only after the new output is complete.
    """
    dest = check_destination(dest, overwrite=overwrite)
    try:
        dest.absolute().parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _os_error(err, dest) from err
    tmp = dest.absolute().parent / f".{dest.name}{_TMP_MARK}{uuid.uuid4().hex[:8]}"
    try:
        if directory:
            tmp.mkdir()
        yield tmp
        _fsync_tree(tmp)
        if dest.exists() or dest.is_symlink():
            old = dest.absolute().parent / f".{dest.name}{_TMP_MARK}old-{uuid.uuid4().hex[:8]}"
            os.replace(dest, old)
            os.replace(tmp, dest)
            _remove(old)
        else:
            os.replace(tmp, dest)
    except OSError as err:
        _remove(tmp)
        raise _os_error(err, dest) from err
    except BaseException:
        _remove(tmp)
        raise
