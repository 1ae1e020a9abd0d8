"""mriscan.plots: figures written whole or not at all."""

from __future__ import annotations

import matplotlib.pyplot as plt
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
