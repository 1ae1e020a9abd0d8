"""Run duplicate-aware 5-fold CV for named configurations and append the results as JSON lines.

Usage: python bench/accuracy_experiments.py STORE OUT_JSONL NAME [NAME ...]
The configurations are the rows of bench/ACCURACY.md; each is a TrainConfig override.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import keras

from mriscan.evaluate import CVConfig, cross_validate
from mriscan.ingest import IngestConfig, ingest
from mriscan.preprocess import PreprocessConfig
from mriscan.train import TrainConfig

# Filters 24-48-96-192 are the default since the seventh session (rows 28-29): every entry
# without its own "filters" ran with 16-32-64-128 (add them to re-run one as recorded).
EXPERIMENTS: dict[str, dict] = {
    "default": {},
    # rows from here on run with batch-norm momentum 0.9 (build_model's default since row 7)
    "bn09": {},
    # from here on rotation/zoom fill with the nearest border pixel (row 8)
    "fill_nearest": {},
    "aug_strong": {"rotation": 0.08, "zoom": 0.2, "translation": 0.1},
    # mirror=True is TrainConfig's default since row 10; spelled out for rows run before that
    "mirror": {"mirror": True},
    "mirror_b16": {"mirror": True, "batch_size": 16},
    # from here on (row 13) the default strategy on one device and the tf.data pipeline
    "s96": {"image_size": 96, "pretrain": 0},
    "s128": {"image_size": 128, "pretrain": 0},
    # from here on (row 15) phantom pre-training and 128² are the defaults
    "pretrain": {},
    "pretrain6k_ft40": {"pretrain": 6000, "epochs": 40},
    # fifth session: a one-call GPU screen (bench/gpu_screen.sh; JAX, mixed_float16) of
    # variants that cost no more than the defaults on 2 CPU cores, plus two that do
    "seed1": {"seed": 1},
    "ema": {"ema": 0.99},
    "wd1e2": {"weight_decay": 1e-2},
    "drop05": {"dropout": 0.5},
    "ls0": {"label_smoothing": 0.0},
    "lr2e3": {"learning_rate": 2e-3},
    "e40": {"epochs": 40},
    "e100": {"epochs": 100},
    "pt1500x10": {"pretrain": 1500, "pretrain_epochs": 10},
    "pt3000x10": {"pretrain_epochs": 10},
    "wide": {"filters": (32, 64, 128, 256)},
    "s160": {"image_size": 160},
    "smoke": {"epochs": 2, "pretrain": 40, "pretrain_epochs": 1},
    # from here on (row 19) slices are aligned to their midline at preprocessing
    "rot02": {"rotation": 0.02},
    # sixth session: harder phantoms (lesions from the midline to the cortex, smaller, subtler;
    # the synth.py change was run from a working copy and not kept, see row 21)
    "phantoms_v2": {},
    # lesions implanted into healthy training slices, at the defaults' number of steps
    "implant1_e45": {"implant": 1, "epochs": 45},
    "e45": {"epochs": 45},
    "implant2_e35": {"implant": 2, "epochs": 35},
    # the same comparisons on other folds and starting weights (seed 1 draws both)
    "seed1_e45": {"seed": 1, "epochs": 45},
    "seed1_implant1_e45": {"seed": 1, "implant": 1, "epochs": 45},
    "s160_e45": {"image_size": 160, "epochs": 45},
    "w24_e45": {"filters": (24, 48, 96, 192), "epochs": 45},
    "seed1_w24_e45": {"seed": 1, "filters": (24, 48, 96, 192), "epochs": 45},
    # seventh session: a third draw of the new defaults
    "seed2": {"seed": 2},
    # a larger inner validation split (threshold from ~46 slices instead of ~28); "cv" holds
    # CVConfig overrides
    "val25": {"cv": {"val_fraction": 0.25}},
    "seed2_val25": {"seed": 2, "cv": {"val_fraction": 0.25}},
    "s64_e60": {"image_size": 64, "epochs": 60},
    "s96_e60": {"image_size": 96, "epochs": 60},
    "s128_e60": {"epochs": 60},
    "s64_e60_wide": {"image_size": 64, "epochs": 60, "filters": (32, 64, 128, 256)},
    "s64_e100": {"image_size": 64, "epochs": 100, "patience": 30},
    "s64_e60_lr3": {"image_size": 64, "epochs": 60, "learning_rate": 3e-3},
    "s64_e60_nocw": {"image_size": 64, "epochs": 60, "class_weight": False},
    "s64_e60_last": {"image_size": 64, "epochs": 60, "select": "last"},
    "s64_e60_best_noes": {"image_size": 64, "epochs": 60, "select": "best"},
    "s64_e60_last_tta": {"image_size": 64, "epochs": 60, "select": "last", "tta": True},
    "s96_e60_last_tta": {"image_size": 96, "epochs": 60, "select": "last", "tta": True},
    "s64_e100_last_tta": {"image_size": 64, "epochs": 100, "select": "last", "tta": True},
    "s64_e60_last_tta_wide": {
        "image_size": 64,
        "epochs": 60,
        "select": "last",
        "tta": True,
        "filters": (32, 64, 128, 256),
    },
}


def store_for(raw_or_store: str, size: int) -> str:
    """A store of the right image size (ingested next to the given one when needed)."""
    base = Path(raw_or_store)
    if (base / "index.json").is_file():
        raw = json.loads((base / "index.json").read_text())
        if raw["image_size"] == size:
            return str(base)
        raise SystemExit(f"{base} has size {raw['image_size']}; pass the raw folder instead")
    target = Path(f"/tmp/mriscan_acc_{size}.zarr")
    ingest(base, target, IngestConfig(preprocess=PreprocessConfig(size=size)))
    return str(target)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    data, out_jsonl, *names = sys.argv[1:]
    for name in names:
        overrides = dict(EXPERIMENTS[name])
        cv_overrides = overrides.pop("cv", {})
        cfg = TrainConfig(verbose="silent", **overrides)
        store = store_for(data, cfg.image_size)
        t0 = time.perf_counter()
        cv = CVConfig(folds=5, train=cfg, **cv_overrides)
        s = cross_validate(store, cv, out=f"/tmp/acc_{name}")
        row = {
            "name": name,
            "overrides": {
                **{k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()},
                **({"cv": cv_overrides} if cv_overrides else {}),
            },
            "minutes": (time.perf_counter() - t0) / 60,
            **{
                k: {"mean": s[k]["mean"], "std": s[k]["std"], "ci95": s[k]["ci95"]}
                for k in ("accuracy", "roc_auc", "sensitivity", "specificity")
            },
            "pooled_auc": s["pooled"]["roc_auc"],
            "backend": keras.backend.backend(),
            "precision": keras.mixed_precision.dtype_policy().name,
        }
        with open(out_jsonl, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
