"""Cross-collection accuracy experiments: train on one collection, evaluate on another.

Usage (from the repository root; see experiments/README.md)::

    python experiments/cross_collection.py NAME [NAME ...] \
        [--train DIR] [--eval DIR] [--out DIR] [--log F] [--stores DIR]

``NAME`` is an entry of ``experiments/accuracy_experiments.py`` (its era and changes give the
complete training and preprocessing settings). Each run does what a user types::

    mriscan train TRAIN                      # the entry's settings, into OUT/RUN/train
    mriscan evaluate EVAL --model OUT/RUN/train/models/best_model.keras

with both collections ingested once per preprocessing into ``--stores`` (so a second entry with
the same preprocessing reuses them). ``evaluate`` removes and counts the slices of EVAL that
near-duplicate a slice the model trained or was validated on. Default: issue 16's target 1,
``brain_mri`` → ``figshare_br35h`` scored as tumor vs no tumor.

A run writes ``OUT/NAME-xc-YYYYmmdd-HHMMSS/`` (``train/`` as ``mriscan train`` writes it,
``evaluation/`` as ``mriscan evaluate`` writes it, ``experiment.json``) and appends one JSON
line to the accuracy log: the entry's full resolved config, the commit, the training run's own
test metrics and the cross-collection metrics (ROC AUC with its group-bootstrap CI, balanced
accuracy, sensitivity, specificity, recall per data class, near-duplicates removed).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling script, run from anywhere
from accuracy_experiments import (
    DEFAULT_LOG,
    DEFAULT_OUT,
    REPO,
    _new_folder,
    git_state,
    resolve,
    store_for,
)

from mriscan.errors import MriscanError

log = logging.getLogger("cross_collection")
DATA = REPO.parent / "shared" / "data"
CROSS_KEYS = ("roc_auc", "balanced_accuracy", "accuracy", "sensitivity", "specificity")


def run(
    name: str, train_data: Path, eval_data: Path, out_root: Path, log_path: Path, stores: Path
) -> dict[str, Any]:
    """Train entry ``name`` on ``train_data``, evaluate on ``eval_data``; log and return the
    record (see the module docstring)."""
    import keras

    from mriscan.evaluate import evaluate
    from mriscan.training.workflow import train

    res = resolve(name)
    git = git_state()
    if git["dirty"]:
        log.warning("the checkout has uncommitted changes: the record says dirty=true")
    train_store = store_for(train_data, res.preprocess, stores)
    eval_store = store_for(eval_data, res.preprocess, stores)
    out = _new_folder(out_root, f"{name}-xc-{time.strftime('%Y%m%d-%H%M%S')}")
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    t0 = time.perf_counter()
    trained = train(train_store, res.cv.train, out=out / "train")
    t_train = time.perf_counter() - t0
    model = Path(trained.model_path)
    ev = evaluate(model, eval_store, out=out)
    record = {
        **res.to_dict(),
        **git,
        "kind": "cross_collection",
        "started": started,
        "minutes_train": t_train / 60,
        "minutes": (time.perf_counter() - t0) / 60,
        "train_data": str(train_data),
        "eval_data": str(eval_data),
        "out": str(out),
        "own_test": {k: _find(trained.metrics, k) for k in CROSS_KEYS},
        "cross": {
            **{k: ev.get(k) for k in CROSS_KEYS},
            "ci95": ev["ci95"],
            "threshold": ev.get("threshold"),
            "recall_per_data_class": ev["recall_per_data_class"],
            "near_duplicates_removed": ev["near_duplicates_removed"]["count"],
            "n_scored": len(ev.get("_decisions", [])) or None,
        },
        "backend": keras.backend.backend(),
    }
    (out / "experiment.json").write_text(json.dumps(record, indent=2, default=str))
    with open(log_path, "a") as fh:
        fh.write(json.dumps(record, default=str) + "\n")
    return record


def _find(metrics: dict[str, Any], key: str) -> Any:
    """``metrics[key]``, or ``metrics["test"][key]`` where the run nests its test numbers."""
    if key in metrics:
        return metrics[key]
    test = metrics.get("test")
    return test.get(key) if isinstance(test, dict) else None


def _summary(rec: dict[str, Any]) -> str:
    c = rec["cross"]
    recalls = ", ".join(
        f"{k} {v['recall']:.3f}" for k, v in c["recall_per_data_class"].items() if v["n"]
    )
    return (
        f"{rec['name']}: AUC {c['roc_auc']:.3f} {c['ci95'].get('roc_auc')}, balanced accuracy "
        f"{c['balanced_accuracy']:.3f}, sensitivity {c['sensitivity']:.3f}, specificity "
        f"{c['specificity']:.3f}; recall {recalls}; {c['near_duplicates_removed']} near-dups "
        f"removed; {rec['minutes']:.1f} min"
    )


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("names", nargs="+", help="entries of accuracy_experiments.py")
    p.add_argument("--train", type=Path, default=DATA / "brain_mri", help="training collection")
    p.add_argument("--eval", type=Path, default=DATA / "figshare_br35h", help="other collection")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--log", type=Path, default=DEFAULT_LOG)
    p.add_argument("--stores", type=Path, default=None, help="ingested stores [OUT/stores]")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        for n in args.names:
            resolve(n)  # every name checked before anything runs
        for n in args.names:
            rec = run(
                n, args.train, args.eval, args.out, args.log, args.stores or args.out / "stores"
            )
            print(_summary(rec), flush=True)
    except MriscanError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
