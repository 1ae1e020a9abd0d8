"""Crop+resize kernel vs scikit-image, OpenCV (1 thread) and Pillow BOX; decode with draft().

Run with ``nox -s bench``. Throughput is in megapixels of source image per second. The crop+resize
targets compare ``align=False``; ``mriscan_align`` is the default path (midline alignment,
``align_method="fast"``) and ``mriscan_search`` the full search it replaced (real set only).
``*_1t`` cases run the same call on one Numba thread: the per-core comparison with the
single-threaded baselines (issue 20: default path ≥ 1.5× Pillow BOX per core).
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
from conftest import per_second, record, target
from PIL import Image

from mriscan.preprocess import preprocess_batch

cv2 = pytest.importorskip("cv2")
skt = pytest.importorskip("skimage.transform")


@pytest.fixture(scope="module")
def synthetic_batch() -> list[np.ndarray]:
    """1,000 slices of 512×512 with a bright disc on a dark background."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:512, :512]
    disc = ((yy - 256) ** 2 + (xx - 256) ** 2 < 200**2).astype(np.uint8) * 120
    return [
        np.clip(disc + rng.integers(0, 60, (512, 512)), 0, 255).astype(np.uint8)
        for _ in range(1000)
    ]


def _mpx(images: list[np.ndarray]) -> float:
    return sum(im.size for im in images) / 1e6


def _datasets(real_images, synthetic_batch):
    return {"real253": real_images, "synth1000x512": synthetic_batch}


METHODS = (
    "mriscan",
    "mriscan_1t",
    "mriscan_align",
    "mriscan_align_1t",
    "mriscan_search",
    "opencv_area",
    "pillow_box",
    "skimage",
)


def _one_thread(fn):
    """``fn`` run on one Numba thread (the per-core cost of a parallel kernel)."""

    def run():
        before = numba.get_num_threads()
        numba.set_num_threads(1)
        try:
            return fn()
        finally:
            numba.set_num_threads(before)

    return run


@pytest.mark.parametrize("size", [128, 224])
@pytest.mark.parametrize("dataset", ["real253", "synth1000x512"])
@pytest.mark.parametrize("method", METHODS)
def test_resize(benchmark, real_images, synthetic_batch, dataset, size, method):
    images = _datasets(real_images, synthetic_batch)[dataset]
    group = f"resize {dataset} → {size}²"
    if method == "skimage":
        images = images[:60]  # ~20× slower: a subset keeps the run short; MPx/s is comparable
    if method == "mriscan_search" and dataset != "real253":
        pytest.skip("the full search is only measured on the real set (~4 ms per slice)")
    if method == "mriscan":
        # the crop+resize kernel alone: no alignment, no low-pass
        fn = lambda: preprocess_batch(images, size=size, align=False, smooth=0.0)  # noqa: E731
    elif method == "mriscan_1t":
        fn = _one_thread(lambda: preprocess_batch(images, size=size, align=False, smooth=0.0))
    elif method == "mriscan_align":  # today's default preprocessing
        fn = lambda: preprocess_batch(images, size=size)  # noqa: E731
    elif method == "mriscan_align_1t":
        fn = _one_thread(lambda: preprocess_batch(images, size=size))
    elif method == "mriscan_search":
        fn = lambda: preprocess_batch(images, size=size, align_method="search", smooth=0.0)  # noqa: E731
    elif method == "opencv_area":
        cv2.setNumThreads(1)

        def fn():
            return [cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA) for im in images]
    elif method == "pillow_box":
        pil = [Image.fromarray(im) for im in images]
        fn = lambda: [p.resize((size, size), Image.BOX) for p in pil]  # noqa: E731
    else:

        def fn():
            return [
                skt.resize(
                    im,
                    (size, size),
                    anti_aliasing=True,
                    preserve_range=True,
                )
                for im in images
            ]

    rounds = 1 if method in ("skimage", "mriscan_search") else 5
    benchmark.pedantic(fn, rounds=rounds, warmup_rounds=1, iterations=1)
    benchmark.extra_info["MPx"] = _mpx(images)
    record(group, method, per_second(benchmark, _mpx(images)), "MPx/s")
    if method == "mriscan":
        target(
            f"kernel {dataset}→{size}: mriscan vs fastest of OpenCV/Pillow",
            group,
            "mriscan",
            ["opencv_area", "pillow_box"],
            1.5,
        )
        target(
            f"kernel {dataset}→{size}: mriscan vs scikit-image", group, "mriscan", ["skimage"], 25
        )
    if method == "mriscan_align_1t":
        target(
            f"default path (fast alignment) {dataset}→{size}, per core, vs Pillow BOX",
            group,
            "mriscan_align_1t",
            ["pillow_box"],
            1.5,
        )


@pytest.mark.parametrize("mode", ["full", "draft"])
def test_decode(benchmark, real_files, mode):
    from mriscan.io import decode_image

    draft = 256 if mode == "draft" else None
    fn = lambda: [decode_image(p, draft_size=draft) for p in real_files]  # noqa: E731
    benchmark.pedantic(fn, rounds=3, warmup_rounds=1, iterations=1)
    record("decode real253", f"pillow_{mode}", per_second(benchmark, len(real_files)), "img/s")
