"""Atomic outputs: write into a temporary sibling, fsync, then rename into place.

A reader of the destination sees either nothing or a complete result, even if the writer is killed. A writer
killed with SIGKILL cannot clean up: its temporary sibling (named after the host and process id) is removed by the
next write to the same destination once that process is gone.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import socket
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

from peft_debias.core.errors import DebiasError, one_line

_TMP_MARK = ".tmp-peft-debias-"
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]


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


def check_not_input(dest: str | os.PathLike, inputs: Iterable[str | os.PathLike]) -> None:
    """Refuse an output that is one of the local ``inputs`` or a folder holding one: with ``--overwrite`` the
    command would replace what it reads. An output inside an input folder is fine; inputs that are not local
    paths (Hub ids, bundled aliases) are skipped."""
    out = Path(dest).resolve()
    for item in inputs:
        source = Path(item)
        if not source.exists():
            continue
        source = source.resolve()
        if source == out or out in source.parents:
            relation = "is" if source == out else "contains"
            raise DebiasError(f"output {dest} {relation} the input {item}", "choose an output path outside the inputs")


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
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return DebiasError(f"no space left on the device while writing {dest}", "free disk space and run again")
    if err.errno == errno.EFBIG:
        return DebiasError(
            f"{dest} outgrew the file size limit ({err.strerror})",
            "raise the limit (ulimit -f) or write to another location",
        )
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return DebiasError(f"cannot write {dest} ({err.strerror})", "choose a writable output location")
    return DebiasError(f"writing {dest} failed: {one_line(err)}", "check the output location and run again")


def _tmp_sibling(dest: Path, tag: str = "") -> Path:
    return dest.absolute().parent / f".{dest.name}{_TMP_MARK}{tag}{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: the process exists
        return True
    return True


def remove_stale_temporaries(dest: str | os.PathLike) -> list[Path]:
    """Remove the temporary siblings of ``dest`` left by writers on this host that were killed (their process is
    gone); returns what was removed. Temporaries of live processes and of other hosts are kept."""
    dest = Path(dest).absolute()
    pattern = re.compile(re.escape(f".{dest.name}{_TMP_MARK}") + rf"(?:old-)?{_HOST}-(\d+)-[0-9a-f]{{8}}$")
    removed = []
    with contextlib.suppress(OSError):
        for path in dest.parent.iterdir():
            match = pattern.match(path.name)
            if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
                _remove(path)
                removed.append(path)
    return removed


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
    remove_stale_temporaries(dest)
    tmp = _tmp_sibling(dest)
    try:
        if directory:
            tmp.mkdir()
        yield tmp
        _fsync_tree(tmp)
        if not directory and dest.is_file() and not dest.is_symlink():
            os.replace(tmp, dest)  # a file replaces a file atomically: the destination is never missing
        elif dest.exists() or dest.is_symlink():
            old = _tmp_sibling(dest, "old-")
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
