"""Atomic outputs: write into a temporary sibling, fsync, then rename into place.

A reader of the destination sees either nothing or a complete result, even if the writer is killed. A writer
killed with SIGKILL cannot clean up: its temporary sibling (named after the host and process id) is removed by the
next write to the same destination once that process is gone.

Scratch folders (:func:`scratch_folder`, e.g. the CDA Arrow tables) follow the same rule: named after the host and
process id, removed at exit, and a killed process's leftovers are removed by the next one that makes such a folder.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import hashlib
import os
import re
import shutil
import socket
import stat
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Sequence
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
    while not parent.exists() and parent != parent.parent:  # missing folders are made in the nearest existing one
        parent = parent.parent
    if not parent.is_dir():
        raise DebiasError(f"output parent {parent} is not a folder", "choose an output path inside a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
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


_SAFETENSORS_OS_CODE = re.compile(r"\(os error (\d+)\)|\bcode: (\d+)")


def _os_error(err: BaseException, dest: Path) -> DebiasError:
    """A write failure as one line naming ``dest``: an ``OSError``, or safetensors' ``SafetensorError`` (its message
    carries the errno as ``(os error N)``)."""
    if not isinstance(err, OSError):
        match = _SAFETENSORS_OS_CODE.search(str(err))
        code = int(match.group(1) or match.group(2)) if match else None
        err = OSError(code, os.strerror(code)) if code else OSError(one_line(err))
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return DebiasError(
            f"no space left on the device while writing {dest} ({err.strerror})",
            "free space or choose another --output",
        )
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


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists (on this host)."""
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
            if match and int(match.group(1)) != os.getpid() and not process_alive(int(match.group(1))):
                _remove(path)
                removed.append(path)
    return removed


def scratch_folder(prefix: str) -> Path:
    """A new, empty temporary folder ``$TMPDIR/<prefix><host>-<pid>-<random>``, removed when this process exits;
    the leftovers of killed processes are removed first (:func:`remove_stale_scratch`)."""
    remove_stale_scratch(prefix)
    path = Path(tempfile.mkdtemp(prefix=f"{prefix}{_HOST}-{os.getpid()}-"))
    atexit.register(shutil.rmtree, path, True)
    return path


def remove_stale_scratch(prefix: str, root: str | os.PathLike | None = None) -> list[Path]:
    """Remove the scratch folders named ``<prefix><host>-<pid>-*`` under ``root`` (default ``$TMPDIR``) that this
    user owns and whose process, on this host, is gone; returns what was removed. Folders of live processes, of
    other users and of other hosts are kept."""
    root = Path(root if root is not None else tempfile.gettempdir())
    pattern = re.compile(re.escape(prefix) + rf"{_HOST}-(\d+)-[A-Za-z0-9_]+$")
    uid = os.getuid() if hasattr(os, "getuid") else None
    removed = []
    with contextlib.suppress(OSError):
        for path in root.iterdir():
            match = pattern.match(path.name)
            if not match or int(match.group(1)) == os.getpid():
                continue
            try:
                info = path.lstat()
            except OSError:
                continue
            if not stat.S_ISDIR(info.st_mode) or (uid is not None and info.st_uid != uid):
                continue
            if not process_alive(int(match.group(1))):
                shutil.rmtree(path, ignore_errors=True)
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
    except BaseException as err:
        _remove(tmp)
        if _is_write_error(err):
            raise _os_error(err, dest) from err
        raise


def _is_write_error(err: BaseException) -> bool:
    """An OS-level write failure: an ``OSError`` or safetensors' failure to serialize (full disk, quota, ...)."""
    serializing = type(err).__name__ == "SafetensorError" and "while serializing" in str(err)
    return isinstance(err, OSError) or serializing


def as_write_error(err: BaseException, dest: str | os.PathLike) -> DebiasError | None:
    """``err`` as the one-line error of a failed write to ``dest`` (full disk, quota, read-only file system, file
    size limit), or None when it is not a write failure. For writers outside :func:`atomic_output` (work files)."""
    return _os_error(err, Path(dest)) if _is_write_error(err) else None


def _commit(pairs: Sequence[tuple[Path, Path]]) -> None:
    """Move each temporary onto its destination; if one move fails, put back what was moved and re-raise."""
    done: list[tuple[Path, Path | None]] = []
    try:
        for tmp, dest in pairs:
            old = None
            if dest.exists() or dest.is_symlink():
                old = _tmp_sibling(dest, "old-")
                os.replace(dest, old)
            done.append((dest, old))
            os.replace(tmp, dest)
    except BaseException:
        for dest, old in reversed(done):
            if old is not None:
                os.replace(old, dest)
            else:
                _remove(dest)
        raise
    for _, old in done:
        if old is not None:
            _remove(old)


@contextlib.contextmanager
def atomic_outputs(dests: Sequence[str | os.PathLike], *, overwrite: bool = False) -> Iterator[list[Path]]:
    """Several output files written all-or-nothing: yield one temporary file path per destination (same order).

    Every destination is checked (:func:`check_destination`) before anything is written. When the block ends
    without error all of them are moved into place; if writing or moving any of them fails, none is left (and
    the files they replace with ``overwrite`` are put back). Used by commands with several outputs, e.g.
    ``eval --output results.json --report report.md``.
    """
    paths = [check_destination(d, overwrite=overwrite) for d in dests]
    if len({p.absolute() for p in paths}) != len(paths):
        raise DebiasError(f"two outputs name the same path ({', '.join(map(str, paths))})", "choose distinct paths")
    tmps: list[Path] = []
    current = paths[0] if paths else Path()
    try:
        for dest in paths:
            current = dest
            dest.absolute().parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(dest)
            tmps.append(_tmp_sibling(dest))
        current = Path(", ".join(map(str, paths)))  # a failure in the block names the file it was writing, if known
        yield list(tmps)
        for tmp, dest in zip(tmps, paths, strict=True):
            current = dest
            _fsync_tree(tmp)
        _commit(list(zip(tmps, paths, strict=True)))
    except BaseException as err:
        for tmp in tmps:
            _remove(tmp)
        if _is_write_error(err):
            named = {str(t): d for t, d in zip(tmps, paths, strict=False)}
            for name in (getattr(err, "filename", None), getattr(err, "filename2", None)):
                current = named.get(str(name), current) if name else current
            raise _os_error(err, current) from err
        raise
