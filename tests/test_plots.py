"""mriscan.plots: figures written whole or not at all."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.figure import Figure

from mriscan.plots import save_figure  # sets the Agg backend


def test_a_figure_interrupted_mid_write_leaves_the_old_file_and_no_partial_one(
    tmp_path, monkeypatch
):
    """A Ctrl-C while a PNG is written left a truncated PNG that no row or record named
    (tester24 HIGH): the write now goes to a hidden temp file, renamed once whole."""
    path = tmp_path / "map.png"
    save_figure(plt.figure(), path)
    old = path.read_bytes()
    real = Figure.savefig

    def cut_short(self, fname, *args, **kwargs):
        real(self, fname, *args, **kwargs)
        with open(fname, "r+b") as f:
            f.truncate(100)
        raise KeyboardInterrupt

    monkeypatch.setattr(Figure, "savefig", cut_short)
    with pytest.raises(KeyboardInterrupt):
        save_figure(plt.figure(), path)
    assert path.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.png"]


def test_pointing_by_tolerance_counts_peaks_at_most_that_far():
    """At 0 the strict rule (inside the box); each distance counts from its own value on
    (a peak 15 px away is a hit at 15, not at 14.9); no scored slice: undefined, not 0."""
    from mriscan.plots import pointing_by_tolerance

    d = [0.0, 0.0, 15.0, 40.0]
    got = pointing_by_tolerance(d, np.array([0.0, 14.9, 15.0, 39.0, 100.0]))
    assert got.tolist() == [0.5, 0.5, 0.75, 0.75, 1.0]
    assert np.isnan(pointing_by_tolerance([], np.array([0.0, 15.0]))).all()


def test_the_pointing_curve_is_written_as_a_png(tmp_path):
    from mriscan.plots import save_pointing_curve

    path = save_pointing_curve({"glioma": [0.0, 20.0], "pituitary": []}, 15.0, tmp_path / "p.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
