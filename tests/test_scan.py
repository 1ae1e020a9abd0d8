"""The rules of a slice with no anatomy (``mriscan.scan``): noise, beside uniform."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from mriscan._scan_kernels import neighbour_correlation
from mriscan.scan import (
    NOISE_CORRELATION,
    NOISE_FOREGROUND_CORRELATION,
    has_no_anatomy,
    is_noise,
    is_uniform,
)
from mriscan.synth import phantom


def _pairs_r(image: np.ndarray, above: float = -1.0) -> float:
    """The kernel's statistic written out with NumPy: Pearson r of each pixel with its right
    and its lower neighbour, both sets of pairs pooled, over pairs both brighter than
    ``above``."""
    a = image.astype(np.float64)
    m = a > above
    h, v = m[:, :-1] & m[:, 1:], m[:-1, :] & m[1:, :]
    x = np.concatenate([a[:, :-1][h], a[:-1, :][v]])
    y = np.concatenate([a[:, 1:][h], a[1:, :][v]])
    return float(np.corrcoef(x, y)[0, 1])


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("L"))


def _head(seed: int) -> np.ndarray:
    """A phantom head slice (160×160, uint8 0-255)."""
    return (phantom(np.random.default_rng(seed), tumor=bool(seed % 2)) * 255).astype(np.uint8)


def test_neighbour_correlation_is_pearson_r_of_the_neighbour_pairs():
    rng = np.random.default_rng(27)
    cases = [rng.integers(0, 256, (int(h), int(w)), dtype=np.uint8) for h, w in
             rng.integers(2, 90, (20, 2))]  # fmt: skip
    cases += [_head(1), np.tril(np.full((7, 5), 200, np.uint8)), np.eye(2, dtype=np.uint8)]
    for image in cases:
        assert neighbour_correlation(image, -1.0, 1) == pytest.approx(_pairs_r(image), abs=1e-9)
        level = float(image.mean())
        want = _pairs_r(image, level)
        got = neighbour_correlation(image, level, 1)
        assert got == pytest.approx(want, abs=1e-9) or (np.isnan(got) and np.isnan(want))
    # constant: no variance, undefined (NaN), not "noise"; too few pairs: undefined
    assert np.isnan(neighbour_correlation(np.full((6, 9), 77, np.uint8), -1.0, 1))
    assert np.isnan(neighbour_correlation(_head(1), -1.0, 160 * 160 * 2))


@pytest.mark.parametrize("seed", range(4))
def test_noise_of_any_amplitude_is_noise_and_heads_are_not(seed):
    """tester32: slices of full-range noise were scored and set a volume's verdict; they have
    no anatomy. Heads, even under strong noise, have it."""
    rng = np.random.default_rng(seed)
    full = rng.integers(0, 256, (128, 128), dtype=np.uint8)
    gauss = np.clip(rng.normal(128, 40, (96, 140)), 0, 255).astype(np.uint8)
    faint = rng.integers(120, 125, (64, 64), dtype=np.uint8)  # a band of 5: also uniform
    # noise in a head-shaped disk, or a half, on black: the region's edge lifts the whole
    # slice's r to ~0.6, its bright pixels' r stays ~0 (tester33)
    yy, xx = np.mgrid[:128, :128]
    disk = np.where((yy - 64) ** 2 + (xx - 64) ** 2 < 50**2, full, 0).astype(np.uint8)
    half = np.where(xx < 64, full, 0).astype(np.uint8)
    assert _pairs_r(disk) > NOISE_CORRELATION and _pairs_r(half) > NOISE_CORRELATION
    for noise in (full, gauss, _jpeg(full, 10), _jpeg(gauss, 75), disk, half):
        assert is_noise(noise) and has_no_anatomy(noise) and not is_uniform(noise)
    assert has_no_anatomy(faint) and is_uniform(faint)
    head = _head(seed)
    noisy = np.clip(head + rng.normal(0, 0.2 * 255, head.shape), 0, 255).astype(np.uint8)
    for image in (head, noisy, _jpeg(noisy, 30)):
        assert not is_noise(image) and not has_no_anatomy(image)
        assert _pairs_r(image) > NOISE_CORRELATION
        assert _pairs_r(image, image.mean()) > NOISE_FOREGROUND_CORRELATION


def test_is_noise_is_false_where_there_are_no_pairs_and_refuses_other_dtypes():
    for shape in ((1, 50), (50, 1), (0, 4)):
        assert not is_noise(np.zeros(shape, np.uint8))
    assert not is_noise(np.zeros((8, 8), np.uint8))  # constant: uniform, not noise
    with pytest.raises(TypeError, match="uint8"):
        is_noise(np.zeros((4, 4), np.float32))
    with pytest.raises(TypeError, match="2-D"):
        is_noise(np.zeros((4, 4, 3), np.uint8))


def test_no_slice_of_the_shared_sets_is_noise(real_data):
    """The threshold's margin on real scans: every JPEG/PNG slice of ``brain_mri`` and
    ``figshare_br35h`` (small, sharpened ones included: r >= 0.54, >= 0.32 over the bright
    pixels) has anatomy."""
    from mriscan.io import decode_image, list_class_folders

    roots = [real_data, real_data.parent / "figshare_br35h"]
    lowest, bright = 1.0, 1.0
    for root in (r for r in roots if r.is_dir()):
        for files in list_class_folders(root).values():
            for path in files:
                image = decode_image(path)
                image = np.ascontiguousarray(image)
                lowest = min(lowest, neighbour_correlation(image, -1.0, 1))
                bright = min(bright, neighbour_correlation(image, float(image.mean()), 1))
                assert not is_noise(image), path
    assert lowest > 2 * NOISE_CORRELATION and bright > 2 * NOISE_FOREGROUND_CORRELATION
