"""mriscan.library_warnings: recording warnings from several threads."""

from __future__ import annotations

import threading
import warnings

from mriscan.library_warnings import recorded


def test_a_second_thread_records_its_warning_after_the_first_thread_left():
    """The order that loses a warning with bare ``catch_warnings``: thread A records, thread B
    starts recording, A leaves (putting back what it found, which drops B's recorder), then B
    warns. With ``recorded`` B waits for A, so its warning is in its own list."""
    a_inside, a_left, b_inside = threading.Event(), threading.Event(), threading.Event()
    got: dict[str, list[str]] = {}

    def a() -> None:
        with recorded() as caught:
            a_inside.set()
            # B cannot get in while A records: without the guard it would, at once
            b_inside.wait(timeout=0.5)
            warnings.warn("from a", UserWarning, stacklevel=1)
        got["a"] = [str(w.message) for w in caught]
        a_left.set()

    def b() -> None:
        a_inside.wait(timeout=10)
        with recorded() as caught:
            b_inside.set()
            a_left.wait(timeout=10)
            warnings.warn("from b", UserWarning, stacklevel=1)
        got["b"] = [str(w.message) for w in caught]

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert got == {"a": ["from a"], "b": ["from b"]}


def test_recorders_nest_on_one_thread_and_keep_repeated_warnings():
    with recorded() as outer:
        warnings.warn("outer", UserWarning, stacklevel=1)
        with recorded() as inner:
            for _ in range(2):  # "always": the second is not dropped as already shown
                warnings.warn("inner", UserWarning, stacklevel=1)
    assert [str(w.message) for w in inner] == ["inner", "inner"]
    assert [str(w.message) for w in outer] == ["outer"]
