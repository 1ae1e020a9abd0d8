"""Fast accuracy search: many CV configurations in parallel processes (for a GPU machine).

``mriscan cv`` is the measurement of record; this harness only screens ideas quickly. It
replays ``cross_validate``'s protocol on preprocessed arrays held in memory (same group-aware
folds from ``mriscan.splits``, same inner validation split, same optimiser and schedule, same
Youden threshold on validation) so that a GPU can try dozens of configurations in minutes.

Status: run once on an H200 before two fixes (one ``fit`` per model instead of per epoch;
normalised exports); no fold finished there, and it has not run on a GPU since (bench/ACCURACY.md).

Usage:
  python bench/accuracy_search.py export RAW_DIR OUT_DIR      # npz per preprocessing variant
  python bench/accuracy_search.py run NPZ_DIR OUT_JSONL [--jobs N] [--deadline S] [NAME ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

# preprocessing variants exported to npz: name -> PreprocessConfig overrides
VARIANTS: dict[str, dict] = {
    "z96": {"size": 96},
    "z128": {"size": 128},
    "z64": {"size": 64},
    "z80": {"size": 80},
    "m96": {"size": 96, "normalization": "minmax"},
    "s96": {"size": 96, "aspect": "stretch"},
}

BASE: dict = {
    "data": "z96",
    "epochs": 60,
    "batch": 32,
    "lr": 1e-3,
    "wd": 1e-4,
    "warmup": 3,
    "ls": 0.05,
    "dropout": 0.3,
    "filters": [16, 32, 64, 128],
    "convs": 1,
    "dense": 128,
    "cw": True,
    "rot": 0.05,
    "zoom": 0.1,
    "translate": 0.0,
    "mixup": 0.0,
    "ens": 1,
    "tta": True,
    "model_seed": 0,
    "split_seed": 0,
}

# name -> overrides of BASE; ordered by priority (earlier ones start first)
CONFIGS: dict[str, dict] = {
    "base": {},
    "ens3": {"ens": 3},
    "s128_f32": {"data": "z128", "filters": [32, 64, 128, 128]},
    "e120": {"epochs": 120},
    "s64_ens3": {"data": "z64", "ens": 3},
    "aug_strong": {"rot": 0.15, "zoom": 0.2, "translate": 0.1},
    "wd05": {"wd": 0.05},
    "mixup02": {"mixup": 0.2},
    "wide": {"filters": [32, 64, 128, 256]},
    "convs2": {"convs": 2},
    "lr3e3": {"lr": 3e-3},
    "nocw": {"cw": False},
    "drop05": {"dropout": 0.5},
    "minmax": {"data": "m96"},
    "stretch": {"data": "s96"},
    "seed1": {"model_seed": 1},
    "aug_strong_ens3": {"rot": 0.15, "zoom": 0.2, "translate": 0.1, "ens": 3},
    "ens5": {"ens": 5},
    "s80_ens3": {"data": "z80", "ens": 3},
    "lr3e4": {"lr": 3e-4},
    "s64": {"data": "z64"},
    "s128": {"data": "z128"},
    "ls0": {"ls": 0.0},
    "noaug": {"rot": 0.0, "zoom": 0.0},
    "batch16": {"batch": 16},
    "wd05_ens3": {"wd": 0.05, "ens": 3},
    "e30_ens3": {"epochs": 30, "ens": 3},
    "seed2": {"model_seed": 2},
    "split1": {"split_seed": 1},
    "split2": {"split_seed": 2},
}


def export(raw: str, out: str) -> None:
    """Ingest ``raw`` once per variant and save images, labels and groups as npz."""
    from mriscan.ingest import IngestConfig, ingest
    from mriscan.preprocess import PreprocessConfig, normalize
    from mriscan.store import ImageStore

    Path(out).mkdir(parents=True, exist_ok=True)
    for name, over in VARIANTS.items():
        store_path = f"/tmp/mriscan_search_{name}.zarr"
        ingest(raw, store_path, IngestConfig(preprocess=PreprocessConfig(**over)))
        store = ImageStore.open(store_path)
        x, y = store.read_batch(np.arange(len(store)))
        x = normalize(x, store.config.normalization, threshold=store.config.threshold)
        np.savez_compressed(
            Path(out) / f"{name}.npz",
            x=x.astype(np.float16),
            y=y.astype(np.int8),
            groups=store.groups,
        )
        print(name, x.shape, flush=True)


def _model(cfg: dict, size: int, seed: int):
    """The mriscan CNN with this configuration's augmentation and head."""
    from mriscan.model import build_model

    return build_model(
        size,
        filters=tuple(cfg["filters"]),
        convs_per_block=cfg["convs"],
        dropout=cfg["dropout"],
        dense_units=cfg["dense"],
        augment=bool(cfg["rot"] or cfg["zoom"] or cfg["translate"]),
        rotation=cfg["rot"],
        zoom=cfg["zoom"],
        translation=cfg["translate"],
        seed=seed,
    )


def _compiled(cfg: dict, size: int, steps: int, seed: int):
    """A compiled model; its jitted steps are reused by every member trained on one fold."""
    import keras

    keras.utils.set_random_seed(seed)
    model = _model(cfg, size, seed)
    total = cfg["epochs"] * steps
    warm = min(cfg["warmup"] * steps, total - 1)
    lr = cfg["lr"]
    sched = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=lr / 10, decay_steps=total - warm, warmup_target=lr, warmup_steps=warm
    )
    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=sched, weight_decay=cfg["wd"]),
        loss=keras.losses.BinaryCrossentropy(label_smoothing=cfg["ls"]),
    )
    return model


def _reset(model, cfg: dict, seed: int) -> None:
    """Fresh initial weights (as a new model with ``seed``) and a fresh optimizer state."""
    import keras

    keras.utils.set_random_seed(seed)
    fresh = _model(cfg, model.input_shape[1], seed)
    model.set_weights(fresh.get_weights())
    if model.optimizer.built:
        for v in model.optimizer.variables:
            v.assign(np.zeros(v.shape, v.dtype))


def _batches(cfg: dict, x, y, tr, seed: int):
    """Training batches as a PyDataset: reshuffled (and mixed up) every epoch, no remainder."""
    import keras

    class Batches(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__()
            counts = np.bincount(y[tr], minlength=2)
            cw = [len(tr) / (2 * counts[k]) if cfg["cw"] else 1.0 for k in range(2)]
            self.xt, self.yt = x[tr], y[tr].astype(np.float32)
            self.wt = np.where(self.yt == 1, cw[1], cw[0]).astype(np.float32)
            self.rng = np.random.default_rng(seed)
            self.on_epoch_end()

        def __len__(self) -> int:
            return len(tr) // cfg["batch"]

        def on_epoch_end(self) -> None:
            perm = self.rng.permutation(len(tr))
            xe, ye, we = self.xt[perm], self.yt[perm], self.wt[perm]
            if cfg["mixup"]:
                lam = self.rng.beta(cfg["mixup"], cfg["mixup"], len(tr)).astype(np.float32)
                other = self.rng.permutation(len(tr))
                lx = lam[:, None, None, None]
                xe = lx * xe + (1 - lx) * xe[other]
                ye = lam * ye + (1 - lam) * ye[other]
                we = lam * we + (1 - lam) * we[other]
            self.epoch = (xe, ye, we)

        def __getitem__(self, i: int):
            s = slice(i * cfg["batch"], (i + 1) * cfg["batch"])
            return tuple(a[s] for a in self.epoch)

    return Batches()


def _fit_predict(model, cfg: dict, x, y, tr, idx, seed: int):
    """Train ``model`` on ``tr``; return its probabilities for ``idx`` (padded: one shape)."""
    model.fit(_batches(cfg, x, y, tr, seed), epochs=cfg["epochs"], verbose=0)
    pad = -len(idx) % 64
    xs = np.concatenate([x[idx], np.zeros((pad, *x.shape[1:]), x.dtype)])
    p = model.predict(xs, batch_size=64, verbose=0)[: len(idx), 0]
    if cfg["tta"]:
        p = (p + model.predict(xs[:, :, ::-1], batch_size=64, verbose=0)[: len(idx), 0]) / 2
    return p


def run_one(npz_dir: str, name: str) -> dict:
    """One configuration's 5-fold CV, as cross_validate does it."""
    from mriscan import metrics as mx
    from mriscan.splits import kfold_indices, split_indices

    cfg = {**BASE, **CONFIGS[name]}
    if os.environ.get("SEARCH_SMOKE_EPOCHS"):  # a quick check of the harness itself
        cfg["epochs"] = int(os.environ["SEARCH_SMOKE_EPOCHS"])
    d = np.load(Path(npz_dir) / f"{cfg['data']}.npz")
    x, y, groups = d["x"].astype(np.float32)[..., None], d["y"].astype(np.int64), d["groups"]
    t0 = time.perf_counter()
    folds = kfold_indices(y, groups, n_folds=5, seed=cfg["split_seed"])
    per = {
        "accuracy": [],
        "roc_auc": [],
        "sensitivity": [],
        "specificity": [],
        "acc_050": [],
        "acc_pooled_thr": [],
    }
    for k in range(5):
        te = np.flatnonzero(folds == k)
        rest = np.flatnonzero(folds != k)
        inner = split_indices(
            y[rest], groups[rest], val_fraction=0.15, test_fraction=0.0, seed=cfg["split_seed"] + k
        )
        tr, va = rest[inner["train"]], rest[inner["val"]]
        pv, pt = np.zeros(len(va)), np.zeros(len(te))
        model = None
        for m in range(cfg["ens"]):
            seed = cfg["model_seed"] * 1000 + k + 100 * m
            if model is None:
                model = _compiled(cfg, x.shape[1], len(tr) // cfg["batch"], seed)
            else:
                _reset(model, cfg, seed)
            p = _fit_predict(model, cfg, x, y, tr, np.concatenate([va, te]), seed)
            pv += p[: len(va)] / cfg["ens"]
            pt += p[len(va) :] / cfg["ens"]
        thr = mx.youden_threshold(y[va], pv)
        met = mx.binary_metrics(y[te], pt, threshold=thr, class_names=("no", "yes"))
        for key in ("accuracy", "roc_auc", "sensitivity", "specificity"):
            per[key].append(float(met[key]))
        per["acc_050"].append(float(((pt >= 0.5) == y[te]).mean()))
        per["acc_pooled_thr"].append(float(((pt >= np.median(pv)) == y[te]).mean()))
        print(
            name,
            k,
            per["accuracy"][-1],
            per["roc_auc"][-1],
            f"{time.perf_counter() - t0:.0f}s",
            flush=True,
        )
    row = {"name": name, "overrides": CONFIGS[name], "seconds": time.perf_counter() - t0}
    for key, vals in per.items():
        row[key] = {
            "mean": float(np.mean(vals)),
            "std": float(np.std(vals, ddof=1)),
            "per_fold": vals,
        }
    return row


def run(npz_dir: str, out: str, names: list[str], jobs: int, deadline: float) -> None:
    """Run configurations in ``jobs`` parallel processes; start none after ``deadline`` s."""
    names = names or list(CONFIGS)
    t0 = time.time()
    pending = list(names)
    procs: dict[str, subprocess.Popen] = {}
    logs = Path(os.environ.get("SEARCH_LOGS", Path(out).with_suffix(".logs")))
    logs.mkdir(parents=True, exist_ok=True)
    while pending or procs:
        while pending and len(procs) < jobs and time.time() - t0 < deadline:
            name = pending.pop(0)
            with open(logs / f"{name}.log", "w") as fh:  # the child keeps its own handle
                procs[name] = subprocess.Popen(
                    [sys.executable, __file__, "one", npz_dir, out, name],
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                )
        if time.time() - t0 >= deadline:
            pending.clear()
        for name, p in list(procs.items()):
            if p.poll() is not None:
                print(f"{time.time() - t0:6.0f}s done {name} rc={p.returncode}", flush=True)
                del procs[name]
        time.sleep(1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["export", "run", "one"])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("names", nargs="*")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--deadline", type=float, default=1e9)
    args = ap.parse_args()
    if args.cmd == "export":
        export(args.a, args.b)
    elif args.cmd == "run":
        run(args.a, args.b, args.names, args.jobs, args.deadline)
    else:
        row = run_one(args.a, args.names[0])
        with open(args.b, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
