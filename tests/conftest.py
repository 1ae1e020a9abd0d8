"""Shared fixtures: the real data set (skipped when absent) and small synthetic slices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

# A script run in subprocesses by test_hardware, not a test module (it must not be imported).
collect_ignore = ["_distributed_worker.py", "_shards.py"]

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = REPO.parent / "shared" / "data" / "brain_mri"


@pytest.fixture(autouse=True, scope="session")
def _private_pretrain_cache(tmp_path_factory):
    """Pre-trained weights (and the identifier key) go to temporary folders, never the user's."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MRISCAN_CACHE", str(tmp_path_factory.mktemp("mriscan_cache")))
    # and the identifier key to a temporary file, never the user's ~/.config/mriscan
    mp.setenv("MRISCAN_KEY_FILE", str(tmp_path_factory.mktemp("mriscan_key") / "id.key"))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The 253-image set beside the repository, or skip."""
    if not (REAL_DATA / "yes").is_dir():
        pytest.skip(f"real data set not found at {REAL_DATA} (expected ../shared beside the repo)")
    return REAL_DATA


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    """An untrained two-class (no/yes) model for 32² slices with its model card, saved as
    ``tmp_path/m/best_model.keras`` (threshold 0.5): for tests of the files around a model."""
    from mriscan.artifacts import ModelCard
    from mriscan.model import build_model
    from mriscan.preprocess import PreprocessConfig

    path = tmp_path / "m" / "best_model.keras"
    path.parent.mkdir()
    build_model(32, filters=(8, 8, 8, 8)).save(path)
    ModelCard(preprocess=PreprocessConfig(size=32), class_names=("no", "yes"), threshold=0.5).save(
        path
    )
    return path


def make_slice(rng: np.random.Generator, h: int = 96, w: int = 80, tumor: bool = False):
    """A tiny head-like slice: dark border, bright ellipse, optional bright blob."""
    yy, xx = np.mgrid[:h, :w]
    cy, cx = h / 2, w / 2
    head = ((yy - cy) / (0.4 * h)) ** 2 + ((xx - cx) / (0.4 * w)) ** 2 <= 1
    img = np.where(head, 90, 3).astype(np.float64) + rng.normal(0, 4, (h, w))
    if tumor:
        by, bx = cy + rng.uniform(-0.15, 0.15) * h, cx + rng.uniform(-0.15, 0.15) * w
        img[((yy - by) ** 2 + (xx - bx) ** 2) <= (0.1 * min(h, w)) ** 2] = 220
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture
def class_folder(tmp_path: Path) -> Path:
    """A raw folder with yes/ and no/ holding 12 small synthetic PNG/JPEG slices."""
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "raw"
    for label, name in ((1, "yes"), (0, "no")):
        (root / name).mkdir(parents=True)
        for i in range(6):
            img = make_slice(rng, 90 + 7 * i, 80 + 5 * i, tumor=bool(label))
            ext = ".png" if i % 2 else ".jpg"
            Image.fromarray(img).save(root / name / f"{name}{i}{ext}")
    return root


def build_small_store(path, n: int = 80, size: int = 32, seed: int = 0):
    """A committed store of ``n`` learnable synthetic slices (tumor = bright blob)."""
    from mriscan.preprocess import PreprocessConfig, preprocess_batch
    from mriscan.store import ImageStore

    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    raw = [make_slice(rng, 64 + int(rng.integers(0, 20)), 64, tumor=bool(k)) for k in labels]
    cfg = PreprocessConfig(size=size)
    with ImageStore.create(path, size, cfg) as st:
        st.set_class_names(["no", "yes"])
        st.append(
            preprocess_batch(raw, cfg),
            labels,
            [
                {"source": f"{'yes' if k else 'no'}/{i}.png", "sha256": f"{i:064x}"}
                for i, k in enumerate(labels)
            ],
        )
        # every slice its own group: these simple phantoms all correlate above the
        # near-duplicate threshold (single linkage would chain all 40 healthy ones into one
        # group, so no split could put healthy slices in both validation and test)
        st.commit(groups=np.arange(n))
    return path


@pytest.fixture
def small_store(tmp_path: Path) -> Path:
    """Path of an 80-slice 32×32 store."""
    return build_small_store(tmp_path / "small.zarr")


def make_class_slice(rng: np.random.Generator, k: int, h: int = 64, w: int = 64) -> np.ndarray:
    """A head-like slice of class ``k``: 0 = no blob (healthy), k >= 1 = a bright blob at the
    k-th of several fixed places (left, right, top, bottom), so every class is learnable."""
    img = make_slice(rng, h, w, tumor=False).astype(np.float64)
    if k:
        yy, xx = np.mgrid[:h, :w]
        cy, cx = [(0.5, 0.3), (0.5, 0.7), (0.3, 0.5), (0.7, 0.5)][(k - 1) % 4]
        blob = ((yy - cy * h) ** 2 + (xx - cx * w) ** 2) <= (0.1 * min(h, w)) ** 2
        img[blob] = 220
    return np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)


def build_class_store(path, class_names, n_per_class: int = 24, size: int = 32, seed: int = 0):
    """A committed store with one class per name (``class_names[0]`` the healthy one)."""
    from mriscan.preprocess import PreprocessConfig, preprocess_batch
    from mriscan.store import ImageStore

    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(class_names)), n_per_class)
    raw = [make_class_slice(rng, int(k)) for k in labels]
    cfg = PreprocessConfig(size=size)
    with ImageStore.create(path, size, cfg) as st:
        st.set_class_names(list(class_names))
        st.append(
            preprocess_batch(raw, cfg),
            labels,
            [
                {"source": f"{class_names[k]}/{i}.png", "sha256": f"{i:064x}"}
                for i, k in enumerate(labels)
            ],
        )
        st.commit(groups=np.arange(len(labels)))  # see build_small_store
    return path


def write_class_folders(root: Path, class_names, n_per_class: int = 8, seed: int = 1) -> Path:
    """Class folders of PNG slices made by ``make_class_slice`` (class k = ``class_names[k]``)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for k, name in enumerate(class_names):
        (root / name).mkdir(parents=True)
        for i in range(n_per_class):
            img = _vary(make_class_slice(rng, k, 60 + i % 8, 56 + i % 8), rng)
            Image.fromarray(img).save(root / name / f"{i}.png")
    return root


def _vary(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A few random darker or brighter patches, so that the slices of a class are not all
    near-duplicates of each other (then no group-aware split could spread a class)."""
    h, w = img.shape
    yy, xx = np.mgrid[:h, :w]
    out = img.astype(np.float64)
    for _ in range(4):
        cy, cx = rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w
        ry, rx = rng.uniform(0.05, 0.2) * h, rng.uniform(0.05, 0.2) * w
        m = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        out[m] = out[m] * rng.uniform(0.1, 0.6) + rng.uniform(0, 120)
    return np.clip(out, 0, 255).astype(np.uint8)


# a training config small enough for unit tests (32² slices, tiny filters, no pre-training)
FAST_TRAIN = {
    "fit.epochs": 2,
    "image_size": 32,
    "optimizer.batch_size": 16,
    "optimizer.warmup_epochs": 0,
    "model.filters": (8, 8, 16, 16),
    "pretrain.phantoms": 0,
    "runtime.verbose": "silent",
}


def fast_config(**changes):
    """``FAST_TRAIN`` with dotted changes, e.g. ``fast_config(**{"fit.epochs": 1})``."""
    from mriscan.config import TrainConfig, override

    return override(TrainConfig(), {**FAST_TRAIN, **changes})


def three_class_task(n: int, seed: int = 0):
    """Class 0: no blob; class 1: a blob top-left; class 2: a blob bottom-right: (x (n, 32, 32,
    1) float32, y (n,) int)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 0.5, (n, 32, 32, 1)).astype(np.float32)
    y = np.arange(n) % 3
    x[y == 1, 4:12, 4:12, 0] += 3.0
    x[y == 2, 20:28, 20:28, 0] += 3.0
    return x, y


@pytest.fixture(scope="session")
def three_class_model():
    """A small CNN trained on ``three_class_task``: shared by the heat-map and pointing-game
    tests (one training per session)."""
    import keras

    from mriscan.model import build_model

    keras.utils.set_random_seed(0)
    x, y = three_class_task(300)
    model = build_model(
        32,
        num_classes=3,
        filters=(8, 16, 16, 16),
        dropout=0.0,
        augment=False,
        dense_units=16,
        mirror=False,
    )
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="categorical_crossentropy")
    model.fit(x, np.eye(3)[y], batch_size=32, epochs=8, verbose=0)
    return model
