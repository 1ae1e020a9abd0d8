"""Temporary folders: removed when their block ends, and after a kill by the next run."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mriscan.scratch import LOCK_NAME, remove_abandoned, scratch_dir

REPO = Path(__file__).resolve().parents[1]

_KILLED = """
import os, signal, sys
from mriscan.scratch import scratch_dir
with scratch_dir("eval", base=sys.argv[1]) as tmp:
    (tmp / "eval.zarr").mkdir()
    print(tmp, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _killed_run(base: Path) -> Path:
    """The scratch folder of a process killed (SIGKILL) while inside ``scratch_dir``."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    r = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_KILLED), str(base)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == -9, r.stderr[-2000:]
    left = Path(r.stdout.strip())
    assert left.is_dir() and left.parent == base and left.name.startswith("mriscan_eval_")
    return left


def test_a_scratch_folder_is_removed_when_its_block_ends(tmp_path):
    with scratch_dir("eval", base=tmp_path) as tmp:
        assert tmp.is_dir() and tmp.name.startswith("mriscan_eval_")
        assert (tmp / LOCK_NAME).read_text().strip() == str(os.getpid())
    assert not tmp.exists()
    with pytest.raises(RuntimeError), scratch_dir("eval", base=tmp_path) as tmp:
        raise RuntimeError("stop")
    assert not tmp.exists()


def test_the_folder_of_a_killed_run_is_removed_by_the_next_one_and_a_live_one_kept(tmp_path):
    left = _killed_run(tmp_path)
    other = tmp_path / "mriscan_notes"  # no lock file: not a scratch folder
    other.mkdir()
    starting = tmp_path / "mriscan_eval_starting"  # its owner has not locked it yet
    starting.mkdir()
    (starting / LOCK_NAME).write_text("")
    with scratch_dir("eval", base=tmp_path) as live:
        assert not left.exists()  # the killed run's folder is gone
        assert other.is_dir() and starting.is_dir()
        # a live run's folder (its lock held, here by this process) is never removed
        assert remove_abandoned(tmp_path) == [] and live.is_dir()
    assert not live.exists()
    assert remove_abandoned(tmp_path) == []
