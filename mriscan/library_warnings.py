"""Recording the warnings a library raises, one thread at a time.

``warnings.catch_warnings`` swaps process-wide state (the filters and ``showwarning``) and puts
back, on exit, what it found on entry. Two threads inside it at once undo each other: when the
first leaves, the second's recorder is gone, so a warning it then raises goes to the console
and not to its list (Python's documentation: "not thread-safe"). mriscan reads DICOM files on
several threads and recognises a truncated file by pydicom's warning ("End of file ..."), so an
unguarded recorder could call a truncated file "without pixel data" on one run and "truncated"
on the next. ``recorded`` lets one thread record at a time; pydicom's parse holds the GIL, so
reading DICOM headers one after another costs no throughput. Library-free; no mriscan imports.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Iterator

__all__ = ["recorded"]

# re-entrant: a recorder inside another on the same thread (a header read while a copied header
# is mended) nests as ``catch_warnings`` does
_LOCK = threading.RLock()


@contextlib.contextmanager
def recorded() -> Iterator[list[warnings.WarningMessage]]:
    """``warnings.catch_warnings(record=True)`` with every warning kept (``"always"``: none is
    dropped as already shown), entered by one thread at a time.

    Yields
    ------
    list of warnings.WarningMessage
        Filled with the warnings raised inside the block (by any thread, as with
        ``catch_warnings``), in order.

    Keep the block short and never wait inside it for another thread that may record too.
    """
    with _LOCK, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught
