"""Evaluate a saved model on a split of its store or on any labelled folder or store.

Imports no training code: a model, its card (``mriscan.artifacts.ModelCard``) and prediction
(``mriscan.predict``) are all it needs.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from mriscan import metrics as mx
from mriscan.artifacts import RunLayout, read_json, write_json
from mriscan.errors import ConfigError, MriscanError
from mriscan.predict import predict_files, predict_store
from mriscan.sources import is_store
from mriscan.store import ImageStore

__all__ = ["SPLITS", "evaluate"]

log = logging.getLogger(__name__)

SPLITS = ("test", "val", "train", "all")


def _recorded_indices(store: ImageStore, part: dict[str, Any], name: str) -> np.ndarray:
    """The store positions of a recorded split part, checked against the store's content.

    Raises
    ------
    MriscanError
        If the store no longer holds the same slices at those positions (rebuilt or changed
        since training): scoring them would silently mix training slices into the test.
    """
    idx = np.asarray(part["indices"], np.int64)
    recs = store.index.records
    if idx.size and (idx.min() < 0 or idx.max() >= len(recs)):
        raise MriscanError(
            f"The recorded {name} split names samples up to {int(idx.max())}, but "
            f"{store.location} holds {len(recs)}: the store was rebuilt since training. "
            "Retrain, or evaluate on a folder of unseen slices (--split all)."
        )
    expected = part.get("pixel_sha256") or part.get("sources")
    key = "pixel_sha256" if part.get("pixel_sha256") else "source"
    if expected is not None:
        now = [getattr(recs[int(i)], key) for i in idx]
        changed = [int(i) for i, a, b in zip(idx, expected, now, strict=True) if a != b]
        if changed:
            raise MriscanError(
                f"{len(changed)} of the {idx.size} recorded {name} samples of {store.location} "
                f"are no longer the slices the model was trained and tested with (e.g. "
                f"position {changed[0]}): the store was rebuilt or changed since training. "
                "Retrain, or evaluate on a folder of unseen slices (--split all)."
            )
    return idx


def evaluate(
    model_path: str | os.PathLike[str],
    data: str | os.PathLike[str] | None = None,
    *,
    split: str = "test",
    out: str | os.PathLike[str] | None = None,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Metrics and plots of a trained model on a split of its store or on any labelled data.

    Parameters
    ----------
    model_path : path
        ``best_model.keras``; when it sits in a run folder (``RUN/models/``), ``RUN/split.json``
        says which store and samples each split holds.
    data : path, optional
        A store or a class-folder directory. Default: the store recorded in ``split.json``.
    split : {"test", "val", "train", "all"}
        Which samples of a store to use (ignored for a class-folder directory: all of it).
    out : path, optional
        Where ``evaluation/`` is written (default: the model's run folder).

    Raises
    ------
    MriscanError
        If no data can be found, or a split is asked for that was not recorded.
    ConfigError
        If the data were preprocessed differently from the model, or their classes differ.
    """
    from mriscan import plots
    from mriscan.model import load_model

    if split not in SPLITS:
        raise ConfigError(f"split must be one of {SPLITS}. Received: {split!r}.")
    model_path = Path(model_path)
    run = RunLayout.of_model(model_path)
    model, card = load_model(model_path)
    recorded = None
    if run is not None and run.split.is_file():
        recorded = read_json(run.split, "the split of the training run")
        made_for = recorded.get("model_sha256") if isinstance(recorded, dict) else None
        if made_for and card.model_sha256 and made_for != card.model_sha256:
            raise MriscanError(
                f"{run.split} was written for another model than {model_path} (a later "
                "run was interrupted?); retrain, or pass DATA with --split all."
            )
    if data is None:
        if recorded is None:
            where = run.split if run is not None else "a run folder"
            raise MriscanError(f"No DATA given and no {where} to find the training store.")
        data = recorded["store"]
    if is_store(data):
        with ImageStore.open(data) as store:
            if store.config != card.preprocess:
                raise ConfigError(
                    f"Store {data} was preprocessed with {store.config}, the model "
                    f"with {card.preprocess}; ingest the data again with the "
                    "model's settings (or pass a class folder)."
                )
            if split == "all":
                idx = np.arange(len(store))
            else:
                if recorded is None or split not in recorded:
                    raise MriscanError(
                        f"Split {split!r} needs the run's split.json; use --split all."
                    )
                if recorded["store"] != str(data):
                    log.warning(
                        "split.json was recorded for store %s, evaluating on %s",
                        recorded["store"],
                        data,
                    )
                idx = _recorded_indices(store, recorded[split], split)
            y = store.labels[idx].astype(np.int64)
            prob = predict_store(model, store, idx, batch_size=batch_size, tta=card.tta)
            class_names = store.class_names
            sources = [store.index.records[i].source for i in idx]
    else:
        from mriscan.io import list_class_folders

        classes = list_class_folders(data)
        names = list(card.class_names)
        if set(classes) != set(names):
            raise ConfigError(f"{data} has classes {sorted(classes)}, the model {names}.")
        files = [(p, names.index(c)) for c, ps in classes.items() for p in ps]
        rows = predict_files(model, card, [p for p, _ in files], batch_size=batch_size)
        ok = [i for i, r in enumerate(rows) if r["error"] == ""]
        y = np.array([files[i][1] for i in ok], np.int64)
        prob = np.array([rows[i]["probability"] for i in ok], np.float64)
        class_names = card.class_names
        sources = [str(files[i][0]) for i in ok]
        split = "all"
    result = mx.binary_metrics(y, prob, threshold=card.threshold, class_names=class_names)
    result.update(
        data=str(data), split=split, model=str(model_path), threshold_rule=card.threshold_rule
    )
    dest = Path(out) if out is not None else (run.root if run is not None else model_path.parent)
    ev = RunLayout(dest).evaluation
    ev.root.mkdir(parents=True, exist_ok=True)
    write_json(ev.metrics, result)
    plots.save_confusion_matrix(
        np.array(result["confusion_matrix"]),
        class_names,
        ev.confusion_plot,
        title=f"{split} (n={result['n']})",
    )
    if len(set(y.tolist())) == 2:
        fpr, tpr, _ = mx.roc_curve(y, prob)
        plots.save_roc(fpr, tpr, result["roc_auc"], ev.roc_plot)
    with open(ev.predictions, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["source", "label", "probability"])
        w.writerows(zip(sources, y.tolist(), prob.tolist(), strict=True))
    return result
