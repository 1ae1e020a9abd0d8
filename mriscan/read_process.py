"""Files read in a second, spawned process beside ingest's reader thread (large DICOM-only runs).

Why: pydicom parses a header in Python, holding the GIL for most of its ~0.5 ms per 256² file.
In one process the reader thread, the main thread's per-file bookkeeping and the writer
thread's appends take turns on the GIL, so the reader slows to 0.7–1.0 ms per file while the
second core idles; two processes each reading half of 2,000 files with pydicom take 0.88 s
against 1.5 s for one (``bench/RESULTS.md``, "#18 ingest, fifth pass"). A second process
parses in parallel for real. It starts with ``spawn`` (a fresh interpreter: TensorFlow's,
Numba's and Blosc's threads do not survive ``fork``) and needs ~1 s to import pydicom, NumPy
and Numba and load the windowing kernels, so ingest's reader thread reads from the front of
the list meanwhile; afterwards both take the next files in chunks (``Claims``). Results are
consumed in listing order, so stored positions never depend on which side read a file.

Every file is read by the same ``mriscan.readers.read_input`` as in process (``pydicom.dcmread``
underneath); its result (slices as uint8 arrays, reasons) is pickled back over a pipe. A file
the child cannot read gives the same ``InputRead.error`` as in process; log records the child's
readers emit are handed to the parent's loggers. If the child dies, every file it held fails
with ``ReaderProcessError``; if the parent dies, the child reads EOF on its input and exits
(at the latest after the chunk it is reading: its next write fails).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import subprocess
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from mriscan.errors import MriscanError

__all__ = ["Claims", "ProcessReader", "ReaderProcessError"]

log = logging.getLogger(__name__)

_READY = "ready"


class ReaderProcessError(MriscanError):
    """The reading process of an ingest ended before handing back all its files."""


class Claims:
    """Hands out the positions ``0..n-1`` in order, in runs, to several readers, never more
    than ``ahead`` past the first position not yet consumed (memory stays bounded and the
    reads stay near the consumer). ``close()`` ends every claim (an error or the end)."""

    def __init__(self, n: int, ahead: int) -> None:
        self._n = n
        self._ahead = ahead
        self._next = 0
        self._consumed = 0
        self._closed = False
        self._cond = threading.Condition()

    def claim(self, size: int, wait: bool = True) -> range | None:
        """The next up to ``size`` positions, or None when all are handed out or the claims
        were closed. While they are too far ahead: wait, or (``wait=False``) an empty range."""
        with self._cond:
            while not self._closed and self._next < self._n:
                if self._next < self._consumed + self._ahead:
                    stop = min(self._next + size, self._n, self._consumed + self._ahead)
                    out = range(self._next, stop)
                    self._next = stop
                    return out
                if not wait:
                    return range(0)
                self._cond.wait()
            return None

    def consumed(self, k: int) -> None:
        """Positions below ``k`` were consumed."""
        with self._cond:
            self._consumed = k
            self._cond.notify_all()

    def close(self) -> int:
        """Hand out nothing more; the first position never handed out."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            return self._next


class ProcessReader:
    """A spawned Python process that reads DICOM files with ``read_input`` on request.

    Started at once (it imports meanwhile); ``setup`` then gives what every read needs.
    """

    def __init__(self) -> None:
        package_root = str(Path(__file__).resolve().parents[1])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_root, env.get("PYTHONPATH", "")) if p
        )
        self._proc = subprocess.Popen(
            [sys.executable, "-c", "from mriscan.read_process import _serve; _serve()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )

    def setup(self, salt: bytes, root: Path, options: Any, warm: Path) -> None:
        """``read_input``'s keyword arguments for every file (``kind="dicom"``), and a file
        the child reads once before it reports ready (result discarded), so that pydicom's
        pixel handlers and the windowing kernels are loaded by then."""
        pickle.dump((salt, root, options, warm), self._proc.stdin, protocol=5)
        self._proc.stdin.flush()

    def feed(
        self,
        claims: Claims,
        paths: Sequence[Path],
        results: Sequence[Future],
        chunk: int,
    ) -> None:
        """Run on a thread of the parent: wait for the child to be ready, then keep it busy
        with two claimed chunks at a time until the claims end, setting each position's future
        to ``(InputRead, slice_flags)``. If the child dies, the futures of its chunks get
        ``ReaderProcessError`` and the claims are closed."""
        sent: list[range] = []
        try:
            if self._receive() != _READY:
                raise ReaderProcessError("the reading process did not start")
            while True:
                # never wait for a claim while results are due: the consumer may need them
                while len(sent) < 2 and (c := claims.claim(chunk, wait=not sent)):
                    sent.append(c)  # before sending: a failed send fails its files too
                    pickle.dump([paths[i] for i in c], self._proc.stdin, protocol=5)
                    self._proc.stdin.flush()
                if not sent:
                    return
                c = sent[0]  # stays listed until its results are set: a failure fails them
                reads, records = self._receive()
                for rec in records:
                    _emit(rec)
                for i, r in zip(c, reads, strict=True):
                    if isinstance(r, BaseException):
                        results[i].set_exception(r)
                    else:
                        results[i].set_result(r)
                sent.pop(0)
        except BaseException as exc:
            unclaimed = claims.close()
            err = exc
            if not isinstance(exc, ReaderProcessError):
                err = ReaderProcessError(
                    "the process reading DICOM files for this ingest ended unexpectedly "
                    f"({self._describe_end(exc)}); nothing was committed. Run the ingest "
                    "again; if it fails the same way, run it with --workers 1 (one process) "
                    "and report this message"
                )
                err.__cause__ = exc
            for i in [*(i for c in sent for i in c), *range(unclaimed, len(results))]:
                if results[i] is not None and not results[i].done():
                    results[i].set_exception(err)

    def _receive(self) -> Any:
        return pickle.load(self._proc.stdout)

    def _describe_end(self, exc: BaseException) -> str:
        try:
            code = self._proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            return f"{type(exc).__name__}: {exc}"
        if code < 0:
            return f"killed by signal {-code}"
        return f"exit status {code}"

    def close(self) -> None:
        """End the child (killed: it holds nothing but reads). Idempotent."""
        if self._proc.returncode is None:
            self._proc.kill()
            self._proc.wait()
        for f in (self._proc.stdin, self._proc.stdout):
            with contextlib.suppress(OSError):
                f.close()


def _emit(record: logging.LogRecord) -> None:
    logger = logging.getLogger(record.name)
    if logger.isEnabledFor(record.levelno):
        logger.handle(record)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:  # tracebacks do not pickle: send their text
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        record.msg = record.getMessage()
        record.args = None
        self.records.append(record)


def _serve() -> None:
    with contextlib.suppress(BrokenPipeError):  # the parent is gone
        _serve_loop()


def _serve_loop() -> None:
    """The child's loop: read the setup, warm up, report ready, then answer each list of
    paths with their ``(InputRead, slice_flags)`` (or the exception ``read_input`` let
    through, e.g. ``MemoryError``) and the log records emitted meanwhile."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # stray prints of libraries go to stderr, not into the results
    inp = sys.stdin.buffer
    try:
        salt, root, options, warm = pickle.load(inp)
    except EOFError:  # not needed after all
        return
    from mriscan.readers import read_input, slice_warnings

    handler = _Collect()
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.DEBUG)
    logging.getLogger("mriscan").setLevel(logging.DEBUG)
    read_input(warm, "dicom", salt=salt, root=root, options=options)
    handler.records.clear()
    pickle.dump(_READY, out)
    out.flush()
    while True:
        try:
            paths = pickle.load(inp)
        except EOFError:
            return
        reads: list[Any] = []
        for p in paths:
            try:
                r = read_input(p, "dicom", salt=salt, root=root, options=options)
                reads.append((r, [slice_warnings(s.image) for s in r.slices]))
            except Exception as exc:  # MemoryError and the like: raised in the parent
                reads.append(exc)
        pickle.dump((reads, handler.records), out, protocol=5)
        out.flush()
        handler.records = []
