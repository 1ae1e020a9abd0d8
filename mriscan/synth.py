"""Synthetic axial brain-MRI phantoms (``yes/`` with lesions, ``no/`` without) for trying mriscan
without real data, for tests, and for scaling benchmarks."""

from __future__ import annotations

import functools
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from mriscan.errors import ConfigError

__all__ = [
    "SynthConfig",
    "default_raw_data",
    "implant_lesion",
    "implant_lesions",
    "phantom",
    "render_slice",
    "synthesize",
]

_CANVAS = 160


@dataclass(frozen=True)
class SynthConfig:
    """What to generate.

    Parameters
    ----------
    count : int
        Number of slices.
    tumor_fraction : float
        Fraction written to ``yes/`` (rounded to a whole number of slices).
    size_range : (int, int)
        Range of the longer image side in pixels (drawn log-uniformly).
    seed : int
    png_fraction, rgb_fraction : float
        Fractions saved as PNG (else JPEG) and as RGB (else grayscale).
    """

    count: int = 400
    tumor_fraction: float = 0.6
    size_range: tuple[int, int] = (150, 1000)
    seed: int = 0
    png_fraction: float = 0.05
    rgb_fraction: float = 0.8

    def __post_init__(self) -> None:
        if self.count < 2:
            raise ConfigError(f"count must be >= 2. Received: count={self.count}.")
        if not 0.0 < self.tumor_fraction < 1.0:
            raise ConfigError(f"tumor_fraction must be in (0, 1). Received: {self.tumor_fraction}.")
        lo, hi = self.size_range
        if not 32 <= lo <= hi <= 4096:
            raise ConfigError(
                f"size_range must satisfy 32 <= min <= max <= 4096. Received: {self.size_range}."
            )

    @property
    def n_tumor(self) -> int:
        """Slices written to ``yes/``."""
        return min(self.count - 1, max(1, round(self.count * self.tumor_fraction)))


def _ellipse(yy, xx, cy, cx, ry, rx, angle):
    """Normalised radius of an ellipse (<= 1 inside)."""
    # Python floats keep float32 grids in float32 (NumPy scalars would promote to float64)
    c, s = float(np.cos(angle)), float(np.sin(angle))
    cy, cx, ry, rx = float(cy), float(cx), float(ry), float(rx)
    dy, dx = yy - cy, xx - cx
    u = (dx * c + dy * s) / rx
    v = (-dx * s + dy * c) / ry
    return np.sqrt(u * u + v * v)


@functools.lru_cache(maxsize=4)
def _grid(canvas: int) -> np.ndarray:
    """Row and column coordinates of a canvas (shared, read-only)."""
    g = np.mgrid[0:canvas, 0:canvas].astype(np.float32)
    g.flags.writeable = False
    return g


def _window(canvas: int, cy: float, cx: float, half: float) -> tuple[slice, slice]:
    """Rows and columns of the canvas within ``half`` pixels of (cy, cx)."""
    y0, y1 = max(0, int(cy - half)), min(canvas, int(cy + half) + 2)
    x0, x1 = max(0, int(cx - half)), min(canvas, int(cx + half) + 2)
    return slice(y0, max(y0, y1)), slice(x0, max(x0, x1))


def _smooth_noise(rng, shape, sigma):
    """Unit-variance Gaussian-smoothed noise (made at reduced size when very smooth)."""
    f = max(1, int(sigma / 1.5))  # ~1.5 px of blur left at the reduced size: smooth enough
    small = (-(-shape[0] // f), -(-shape[1] // f))
    n = ndimage.gaussian_filter(rng.standard_normal(small, np.float32), sigma / f, truncate=3.0)
    if f > 1:
        big = Image.fromarray(n.astype(np.float32), "F").resize(
            (small[1] * f, small[0] * f), Image.BILINEAR
        )
        n = np.asarray(big, np.float32)[: shape[0], : shape[1]]
    return n / (n.std() + 1e-9)


@dataclass(frozen=True)
class _LesionLook:
    """Intensity ranges (in [0, 1]) and texture of a drawn lesion."""

    halo_gain: tuple[float, float]  # oedema: added to the tissue around the lesion
    bright: tuple[float, float]  # level of an enhancing lesion (70% of them)
    dark: tuple[float, float]  # level of a hypointense one
    necrotic: tuple[float, float]  # level of a necrotic centre (40% of lesions)
    grain: float  # amplitude of the smooth noise on the lesion
    grain_sigma: float  # its smoothness in pixels
    soft_edge: bool  # blend over about a pixel instead of a hard cut-out


_PHANTOM_LESION = _LesionLook(
    halo_gain=(0.12, 0.25),
    bright=(0.78, 0.98),
    dark=(0.12, 0.25),
    necrotic=(0.15, 0.3),
    grain=0.05,
    grain_sigma=2,
    soft_edge=False,
)


def _draw_lesion(
    rng: np.random.Generator,
    img: np.ndarray,
    brain: np.ndarray,
    cy: float,
    cx: float,
    size: float,
    look: _LesionLook,
    *,
    wobble_sigma: float,
) -> None:
    """Draw one lesion of radius ``size`` at (cy, cx) into ``img`` (in place), inside ``brain``."""
    yy, xx = _grid(img.shape[0])
    w = _window(img.shape[0], cy, cx, 2.3 * size)  # room for wobble and the oedema halo
    shape = (w[0].stop - w[0].start, w[1].stop - w[1].start)
    wobble = 0.25 * _smooth_noise(rng, shape, wobble_sigma)
    aspect, tilt = rng.uniform(0.6, 1.0), rng.uniform(0, np.pi)
    lr = _ellipse(yy[w], xx[w], cy, cx, size, size * aspect, tilt) + wobble
    region, inb = img[w], brain[w]
    if rng.random() < 0.6:  # oedema halo
        halo = (lr <= rng.uniform(1.4, 1.9)) & (lr > 1) & inb
        region[halo] = np.minimum(region[halo] + rng.uniform(*look.halo_gain), 1)
    bright = rng.random() < 0.7
    level = rng.uniform(*look.bright) if bright else rng.uniform(*look.dark)
    core = level + look.grain * _smooth_noise(rng, shape, look.grain_sigma)
    if rng.random() < 0.4:  # necrotic centre with an enhancing rim
        core = np.where(lr < 0.55, rng.uniform(*look.necrotic), core)
    if look.soft_edge:
        alpha = np.clip((1.0 - lr) * size / 1.5 + 0.5, 0, 1) * inb
        region[...] = region * (1 - alpha) + np.clip(core, 0, 1) * alpha
    else:
        inside = (lr <= 1) & inb
        region[inside] = core[inside]


def phantom(rng: np.random.Generator, tumor: bool, canvas: int = _CANVAS) -> np.ndarray:
    """One phantom slice on a square canvas, float in [0, 1].

    Skull and scalp, grey/white-matter texture, ventricles, T1- or T2-like contrast, bias field,
    Rician-like noise and a random gamma;
    ``tumor`` adds 1–2 lesions (brighter or darker, with or without oedema and mass effect);
    healthy slices may carry small look-alikes (vessels, asymmetric bright spots).
    """
    # float32 throughout, and small structures drawn only inside their own window, so that
    # 10,000 slices take well under a minute
    yy, xx = _grid(canvas)
    cy = canvas / 2 + rng.uniform(-0.04, 0.04) * canvas
    cx = canvas / 2 + rng.uniform(-0.04, 0.04) * canvas
    ry = rng.uniform(0.3, 0.46) * canvas  # slice level: smaller near the vertex
    rx = ry * rng.uniform(0.7, 0.92)
    ang = rng.uniform(-0.25, 0.25)
    r = _ellipse(yy, xx, cy, cx, ry, rx, ang)
    # T1-like (dark fluid, white matter brighter) or T2-like (bright fluid, grey matter brighter)
    t2 = rng.random() < 0.4
    img = np.zeros((canvas, canvas), np.float32)
    img[r <= 1.06] = rng.uniform(0.3, 0.45)  # scalp
    img[(r <= 1.0) & (r > 0.93)] = rng.uniform(0.75, 0.95)  # skull/fat ring
    img[(r <= 0.93) & (r > 0.89)] = rng.uniform(0.75, 0.9) if t2 else 0.08  # CSF gap
    brain = r <= 0.89
    tex = _smooth_noise(rng, (canvas, canvas), rng.uniform(2.5, 4.5))
    gm, wm = rng.uniform(0.4, 0.5), rng.uniform(0.55, 0.68)
    if t2:
        gm, wm = wm, gm
    tissue = np.where(tex > rng.uniform(-0.3, 0.3), wm, gm).astype(np.float32)
    # fine grain: white noise, smoothed together with the edges below
    tissue += 0.05 * rng.standard_normal(tissue.shape, np.float32)
    tissue = ndimage.gaussian_filter(tissue, 0.8, truncate=3.0)
    img[brain] = tissue[brain]
    shift = 0.0
    lesions = []
    if tumor:
        for _ in range(rng.choice([1, 1, 1, 2])):
            rad = rng.uniform(0.18, 0.55)
            theta = rng.uniform(0, 2 * np.pi)
            ly = cy + rad * ry * np.sin(theta)
            lx = cx + rad * rx * np.cos(theta)
            size = rng.uniform(0.04, 0.16) * canvas
            lesions.append((ly, lx, size))
        shift = -np.sign(lesions[0][1] - cx) * min(lesions[0][2] * 0.25, 0.05 * canvas)
    # ventricles: a pair of crescents near the centre (dark on T1, bright on T2)
    vent = rng.uniform(0.05, 0.1) * canvas
    vlevel = rng.uniform(0.8, 0.95) if t2 else rng.uniform(0.08, 0.16)
    for side in (-1, 1):
        vy, vx = cy - 0.02 * canvas, cx + shift + side * 0.05 * canvas
        w = _window(canvas, vy, vx, vent)
        vr = _ellipse(yy[w], xx[w], vy, vx, vent, vent * 0.35, ang + side * 0.35)
        img[w][(vr <= 1) & brain[w]] = vlevel
    for ly, lx, size in lesions:
        _draw_lesion(rng, img, brain, ly, lx, size, _PHANTOM_LESION, wobble_sigma=6)
    if not tumor:
        for _ in range(rng.integers(0, 4)):  # look-alikes: small bright vessels / spots
            rad, theta = rng.uniform(0.1, 0.7), rng.uniform(0, 2 * np.pi)
            sy, sx = cy + rad * ry * np.sin(theta), cx + rad * rx * np.cos(theta)
            size = rng.uniform(0.012, 0.035) * canvas
            w = _window(canvas, sy, sx, size)
            spot = _ellipse(yy[w], xx[w], sy, sx, size, size * rng.uniform(0.3, 1), theta) <= 1
            img[w][spot & brain[w]] = rng.uniform(0.7, 0.9)
    img = ndimage.gaussian_filter(img, 0.6, truncate=3.0)
    img *= 1 + rng.uniform(0.05, 0.2) * _smooth_noise(rng, (canvas, canvas), canvas / 5)  # bias
    sigma = rng.uniform(0.01, 0.04)
    noise = rng.standard_normal((2, canvas, canvas), np.float32)
    img = np.sqrt((img + sigma * noise[0]) ** 2 + (sigma * noise[1]) ** 2)
    img = np.clip(img / max(img.max(), 1e-6), 0, 1)
    return img ** np.float32(rng.uniform(0.7, 1.4))  # scanner/windowing contrast


def implant_lesion(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """A copy of a preprocessed uint8 slice (S, S) with 1–2 synthetic lesions inside the head.

    The lesions are drawn like the phantoms' (brighter or darker than the brain around them,
    with or without oedema and a necrotic centre) but from the slice's own intensities, so a
    healthy slice becomes a tumor example on a real background.
    """
    f = image.astype(np.float32) / 255.0
    s = f.shape[0]
    parts, n = ndimage.label(f > 0.1)
    if n == 0:
        return image.copy()
    # the largest bright component: the head, not a frame or a caption around it
    head = ndimage.binary_fill_holes(parts == 1 + int(np.argmax(np.bincount(parts.ravel())[1:])))
    depth_map = ndimage.distance_transform_edt(head)
    depth = float(depth_map.max())
    if depth < 8:  # nothing head-like to draw in: leave the slice as it is
        return image.copy()
    brain = depth_map >= 0.12 * depth  # inside the skull ring
    tissue = f[brain]
    p1, p15, p90, p995 = np.percentile(tissue, [1, 15, 90, 99.5])
    # the slice's own dark and bright ends, a gentler halo and grain, and a soft edge
    look = _LesionLook(
        halo_gain=(0.08, 0.2),
        bright=(p90, min(1.0, p995 + 0.1)),
        dark=(p1, p15),
        necrotic=(p1, p15),
        grain=0.04,
        grain_sigma=1.5,
        soft_edge=True,
    )
    out = f.copy()
    for _ in range(rng.choice([1, 1, 1, 2])):
        size = float(np.exp(rng.uniform(np.log(0.025), np.log(0.14)))) * s
        # centres deep enough that the lesion stays inside the brain
        ok = np.flatnonzero(depth_map.ravel() >= min(0.12 * depth + size, 0.8 * depth))
        cy, cx = divmod(int(ok[rng.integers(ok.size)]), s)
        _draw_lesion(rng, out, brain, cy, cx, size, look, wobble_sigma=max(2.0, size / 3))
    return np.clip(np.rint(out * 255), 0, 255).astype(np.uint8)


def implant_lesions(images: np.ndarray, copies: int, seed: int) -> np.ndarray:
    """``copies`` lesion-implanted versions of every slice in ``images`` (N, S, S) uint8,
    in the order slice 0 copy 0, slice 0 copy 1, ... (seeded per slice and copy)."""
    out = np.empty((images.shape[0] * copies, *images.shape[1:]), np.uint8)
    for i, img in enumerate(images):
        for c in range(copies):
            out[i * copies + c] = implant_lesion(np.random.default_rng([seed, i, c, 7]), img)
    return out


def render_slice(i: int, cfg: SynthConfig, canvas: int = _CANVAS) -> tuple[Image.Image, bool]:
    """Slice ``i`` of ``cfg`` as the image it is saved as, and whether it has a tumor."""
    rng = np.random.default_rng([cfg.seed, i])
    tumor = i < cfg.n_tumor
    img = phantom(rng, tumor, canvas)
    # log-uniform like the real set (longest side: median 331 px, 90% below 630 px)
    lo, hi = cfg.size_range
    side = min(hi, int(np.exp(rng.uniform(np.log(lo), np.log(hi + 1)))))
    aspect = rng.uniform(0.8, 1.25)
    h, w = (
        (side, max(16, int(side / aspect))) if aspect >= 1 else (max(16, int(side * aspect)), side)
    )
    # place the head with a random scale and offset on a dark background of size (h, w)
    scale = rng.uniform(0.6, 1.0) * min(h, w) / canvas
    u8 = (img * 255).astype(np.uint8)
    # the background level of the phantom's own corners, so the pasted square does not show
    bg = int(np.median(u8[:8, :8]))
    head = Image.fromarray(u8).rotate(rng.uniform(-12, 12), resample=Image.BILINEAR, fillcolor=bg)
    hs = max(8, int(canvas * scale))
    head = head.resize((hs, hs), Image.BILINEAR)
    out = Image.new("L", (w, h), bg)
    out.paste(
        head, (int(rng.integers(0, max(1, w - hs + 1))), int(rng.integers(0, max(1, h - hs + 1))))
    )
    if rng.random() < cfg.rgb_fraction:
        out = out.convert("RGB")
    return out, tumor


def _render(i: int, cfg: SynthConfig, out: Path) -> Path:
    """Generate slice ``i`` and save it under ``yes/`` or ``no/``."""
    image, tumor = render_slice(i, cfg)
    # its own stream, so the file type does not shift the drawing's random numbers
    png = np.random.default_rng([cfg.seed, i, 1]).random() < cfg.png_fraction
    ext = ".png" if png else ".jpg"
    path = out / ("yes" if tumor else "no") / f"syn_{i:06d}{ext}"
    if png:  # grayscale and fast zlib: default-level PNG took 30 ms, more than the drawing
        image.convert("L").save(path, compress_level=1)
    else:
        image.save(path, quality=90)
    return path


def synthesize(
    out_dir: str | os.PathLike[str],
    config: SynthConfig | None = None,
    *,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, int]:
    """Write ``config.count`` phantom slices into ``out_dir/yes`` and ``out_dir/no``.

    Deterministic: the same seed gives the same bytes, whatever the number of workers.

    Returns
    -------
    dict
        Slices written per class.
    """
    cfg = config if config is not None else SynthConfig()
    out = Path(out_dir)
    for cls in ("yes", "no"):
        (out / cls).mkdir(parents=True, exist_ok=True)
    n = min(workers or os.cpu_count() or 1, cfg.count)
    step = max(1, min(250, -(-cfg.count // (8 * n))))
    chunks = [(lo, min(lo + step, cfg.count)) for lo in range(0, cfg.count, step)]
    done = 0
    if n == 1:
        for lo, hi in chunks:
            done += _render_range(lo, hi, cfg, out)
            if progress is not None:
                progress(done, cfg.count)
    else:
        # processes, not threads: drawing holds the GIL often enough that two threads gave
        # 1.6x; "spawn" because a forked child would inherit Numba/TensorFlow thread pools
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=n, mp_context=ctx) as pool:
            futures = [pool.submit(_render_range, lo, hi, cfg, out) for lo, hi in chunks]
            for future in as_completed(futures):
                done += future.result()
                if progress is not None:
                    progress(done, cfg.count)
    return {"yes": cfg.n_tumor, "no": cfg.count - cfg.n_tumor}


def _render_range(lo: int, hi: int, cfg: SynthConfig, out: Path) -> int:
    """Render slices ``lo..hi-1`` (one task of a worker process)."""
    for i in range(lo, hi):
        _render(i, cfg, out)
    return hi - lo


def default_raw_data(
    root: str | os.PathLike[str] = "data/raw",
    *,
    count: int = 400,
    log: Callable[[str], None] | None = None,
) -> Path:
    """The data ``mriscan train`` uses when given none.

    ``root`` itself when it holds class folders (other than ``synthetic/``); otherwise
    ``root/synthetic``, generated once with ``count`` phantom slices.
    """
    root = Path(root)
    classes = (
        [
            p
            for p in root.iterdir()
            if p.is_dir() and p.name != "synthetic" and not p.name.startswith(".")
        ]
        if root.is_dir()
        else []
    )
    if len(classes) >= 2:
        return root
    synthetic = root / "synthetic"
    if not ((synthetic / "yes").is_dir() and any((synthetic / "yes").iterdir())):
        if log is not None:
            log(
                f"No class folders in {root}/: generating {count} SYNTHETIC phantom slices into "
                f"{synthetic}/ (once). For real data put yes/ and no/ folders in {root}/ or "
                "pass a folder: `mriscan train path/to/data`."
            )
        synthesize(synthetic, SynthConfig(count=count))
    elif log is not None:
        log(
            f"Training on the SYNTHETIC phantom slices in {synthetic}/ (no real data in "
            f"{root}/). Put yes/ and no/ folders in {root}/ to use real slices."
        )
    return synthetic
