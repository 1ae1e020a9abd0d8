"""Reference check of the fast midline alignment against the full search on the real set.

Run: ``python bench/align_reference.py [DATA_DIR]`` (default ``../shared/data/brain_mri``).
Prints the distribution of the differences between the poses that ``align_method="fast"`` and
``"search"`` find on every slice (crop + resize to 128², ``align=False`` first), the loss of the
full-resolution symmetry score (correlation with the mirror image, the search's own objective)
at the fast pose, and how much the two aligned outputs differ. ``tests/test_preprocess.py``
asserts the shares this prints.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from mriscan import _kernels
from mriscan.io import decode_image
from mriscan.preprocess import midline_pose, preprocess_batch


def _score(img: np.ndarray, pose: tuple[float, float]) -> float:
    buf = np.empty(img.shape, np.float32)
    _kernels.rotate_shift(img, np.radians(pose[0]), pose[1], buf)
    return float(_kernels.mirror_correlation(buf, 0))


def main(data: Path) -> None:
    files = sorted(p for d in ("yes", "no") for p in (data / d).iterdir())
    crops = preprocess_batch([decode_image(p) for p in files], size=128, align=False)
    t0 = time.thread_time()
    fast = np.array([midline_pose(c, "fast") for c in crops])
    t1 = time.thread_time()
    ref = np.array([midline_pose(c, "search") for c in crops])
    t2 = time.thread_time()
    da = np.abs(fast[:, 0] - ref[:, 0])
    dd = np.abs(fast[:, 1] - ref[:, 1])
    loss = np.array([_score(c, r) - _score(c, f) for c, f, r in zip(crops, fast, ref, strict=True)])
    n = len(crops)
    print(f"{n} slices; pose CPU time per slice (with the Python call): "
          f"fast {1e3 * (t1 - t0) / n:.3f} ms, "
          f"search {1e3 * (t2 - t1) / n:.3f} ms")  # fmt: skip
    for q in (50, 75, 90, 95, 99, 100):
        a, d, s = (np.percentile(x, q) for x in (da, dd, loss))
        print(f"  p{q:<3} |d angle| {a:5.2f}°  |d shift| {d:5.2f} px  score loss {s:+.4f}")
    for tol_a, tol_d in ((1.5, 1.0), (3.0, 2.0)):
        share = np.mean((da <= tol_a) & (dd <= tol_d))
        print(f"  angle within {tol_a}° and shift within {tol_d} px: {share:.1%}")
    print(
        f"  angle within 1.5°: {np.mean(da <= 1.5):.1%}; shift within 1 px: {np.mean(dd <= 1):.1%}"
    )
    print(f"  score loss <= 0.01: {np.mean(loss <= 0.01):.1%}; median {np.median(loss):+.4f}")
    out_fast = preprocess_batch([decode_image(p) for p in files], size=128)
    out_ref = preprocess_batch([decode_image(p) for p in files], size=128, align_method="search")
    mad = np.abs(out_fast.astype(int) - out_ref.astype(int)).mean(axis=(1, 2))
    print(f"  aligned slices, mean |fast - search| per slice: median {np.median(mad):.2f}, "
          f"p90 {np.percentile(mad, 90):.2f}, max {mad.max():.2f} grey levels")  # fmt: skip


if __name__ == "__main__":
    default = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "brain_mri"
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else default)
