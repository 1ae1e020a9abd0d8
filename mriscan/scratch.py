"""Temporary folders that a killed mriscan process does not leave behind for good.

``tempfile.TemporaryDirectory`` removes its folder when the ``with`` block ends, but a process
killed with SIGKILL (or by the out-of-memory killer, or a lost machine) never runs that code:
the folder stays in the system's temporary directory (an evaluation's store of a large
collection: tens of MB each time). ``scratch_dir`` makes the same kind of folder, holds an
``flock`` on a lock file inside it for as long as the process lives (the operating system
drops it when the process dies, however it dies), and removes at its start the folders of
earlier runs whose lock nobody holds any more. The lock is the one ``mriscan.store``'s write
lock uses; the standard library offers no temporary folder that outlives a kill safely, hence
this module.

Only folders that carry this module's lock file, are owned by the current user and are not
symbolic links are ever removed; a live run's folder (its lock held) is left alone, and so is
one whose owner is between creating the folder and taking the lock (an empty lock file).
Keras-free.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["LOCK_NAME", "PREFIX", "remove_abandoned", "scratch_dir"]

log = logging.getLogger(__name__)

#: every scratch folder's name starts with it (then the kind, e.g. ``mriscan_eval_``)
PREFIX = "mriscan_"
#: the lock file inside a scratch folder, held (flock) by the process that uses the folder
LOCK_NAME = ".mriscan-scratch.lock"

try:
    import fcntl
except ImportError:  # not POSIX: no flock; folders are removed only by their own process
    fcntl = None  # type: ignore[assignment]


def remove_abandoned(base: str | os.PathLike[str] | None = None) -> list[Path]:
    """Remove the scratch folders under ``base`` (default: ``tempfile.gettempdir()``) whose
    process is gone (its lock is free); returns their paths. Folders without this module's
    lock file, of another user, symbolic links, and those whose lock is held are kept. Errors
    (a folder vanishing meanwhile, permissions) skip that folder."""
    if fcntl is None:
        return []
    base = Path(base) if base is not None else Path(tempfile.gettempdir())
    removed: list[Path] = []
    try:
        candidates = sorted(base.glob(PREFIX + "*"))
    except OSError:
        return removed
    uid = os.getuid()
    for folder in candidates:
        try:
            if folder.is_symlink() or not folder.is_dir() or folder.stat().st_uid != uid:
                continue
            fd = os.open(folder / LOCK_NAME, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            continue  # no lock file: not a scratch folder (or not yet one)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # held: its process is alive
            if not os.read(fd, 64).strip():
                continue  # its owner has not taken the lock yet
            shutil.rmtree(folder, ignore_errors=True)
            if not folder.exists():
                removed.append(folder)
        finally:
            os.close(fd)  # drops the lock when we took it
    if removed:
        log.info(
            "removed %d temporary folder(s) left by stopped mriscan runs: %s",
            len(removed),
            ", ".join(p.name for p in removed),
        )
    return removed


@contextmanager
def scratch_dir(kind: str, base: str | os.PathLike[str] | None = None) -> Iterator[Path]:
    """A new empty folder ``<base>/mriscan_<kind>_<random>`` for the ``with`` block, removed
    when it ends (also on an exception); a process killed inside the block leaves it to the
    next ``scratch_dir`` or ``remove_abandoned`` of any mriscan process, which removes it.

    ``kind``: a short word naming the user (``"eval"``, ``"implants"``, ``"pretrain"``);
    ``base``: where (default: ``tempfile.gettempdir()``, i.e. ``$TMPDIR`` or ``/tmp``).
    Abandoned folders under ``base`` are removed first (``remove_abandoned``).
    """
    root = Path(base) if base is not None else Path(tempfile.gettempdir())
    remove_abandoned(root)
    path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{kind}_", dir=root))
    fd = None
    try:
        if fcntl is not None:
            fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new folder: nobody else holds it
            os.write(fd, f"{os.getpid()}\n".encode())
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        if fd is not None:
            os.close(fd)
