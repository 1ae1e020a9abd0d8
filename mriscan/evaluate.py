"""Evaluate a saved model on a split of its store, or on any labelled folder or store.

Imports no training code: a model, its card (``mriscan.artifacts.ModelCard``) and prediction
(``mriscan.inference``) are all it needs. Data from another collection are scored after
removing — and counting — the slices that near-duplicate the model's own training slices
(their thumbnails are saved beside the model), and their classes are matched to the model's
(``mriscan.tasks.compare_classes``): the same classes, or tumor vs no tumor with recall per
data class (e.g. per tumor type).
"""

from __future__ import annotations

import csv
import logging
import math
import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mriscan import metrics as mx
from mriscan.artifacts import (
    ModelCardError,
    RunLayout,
    read_json,
    remove_stale_plots,
    training_signatures,
    write_json,
)
from mriscan.config import check_class_map, class_map_sources
from mriscan.duplicates import DEFAULT_THRESHOLD, near_duplicates_of
from mriscan.errors import ConfigError, MriscanError
from mriscan.inference import predict_store
from mriscan.io import SourceFile
from mriscan.readers import (
    MIN_SIDE,
    NOISE_RULE,
    UNIFORM_RULE,
    ReadOptions,
    file_sha256,
    settings_for_model,
)
from mriscan.scan_config import describe_setting
from mriscan.scratch import scratch_dir
from mriscan.sources import flagged_slices, is_store, no_anatomy_mask
from mriscan.splits import patient_keys
from mriscan.store import ImageStore
from mriscan.tasks import Comparison, compare_classes

__all__ = [
    "HEADLINE_METRICS",
    "LEVELS",
    "SPLITS",
    "TUMOR_CALL_RULE",
    "Scoring",
    "called_metrics",
    "evaluate",
    "failing",
    "grouped_levels",
    "one_class_summary",
    "tumor_calls",
    "undefined_metrics",
    "unit_of",
    "unreadable_rows",
    "write_unit_rows",
]

log = logging.getLogger(__name__)

SPLITS = ("test", "val", "train", "all")


HEADLINE_METRICS = (
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "roc_auc",
    "macro_roc_auc",
    "sensitivity",
    "specificity",
)
"""The metrics that summarise a whole evaluation; ``evaluate`` exits 1 when one of them is
undefined on the slices (``failing``). A per-class value that is undefined (a class with no
slice, or never predicted) is listed in ``undefined`` too, but does not fail the command."""


def failing(undefined: dict[str, str]) -> dict[str, str]:
    """The entries of an ``undefined`` dict that are headline metrics (``HEADLINE_METRICS``):
    those make ``mriscan evaluate`` exit 1."""
    return {k: v for k, v in undefined.items() if k in HEADLINE_METRICS}


def undefined_metrics(
    result: dict[str, Any],
    y: np.ndarray,
    removed: dict[str, int] | None = None,
    *,
    unit: str = "",
    unpooled: dict[str, str] | None = None,
    not_in_data: Sequence[str] = (),
) -> dict[str, str]:
    """Why each undefined (NaN) metric of ``result`` is undefined, by metric name.

    ``result``: a ``mriscan.metrics.binary_metrics`` or ``multiclass_metrics`` dict, which
    already holds NaN wherever a metric is undefined (``mriscan.metrics``' one rule; this only
    explains, it changes nothing); ``y``: its labels, int of shape (n,). ``removed``: per
    class name, the readable slices taken out before scoring as near-duplicates of training
    slices; a class with none left but some removed is said to have been emptied so, not to
    have no readable slice. ``unit``: what ``y`` labels when not slices ("patient", "series or
    volume": "no patient of class 'no'"), and ``unpooled``: per class name, why its readable
    slices gave no such unit (e.g. "24 readable slice(s) have no Patient ID"), added to the
    reason. ``not_in_data``: the classes no class of the data is scored as (a tumor-only
    collection has no healthy class): "these data hold no class 'no'", not "no readable
    slice".

    Keys: the headline metrics (``HEADLINE_METRICS``; two classes: ROC AUC and balanced
    accuracy need slices of both classes, sensitivity of the positive class
    (``class_names[1]``), specificity of the negative one; K classes: the macro one-vs-rest
    AUC needs two classes present), then per class ``"precision of 'c'"`` (class never
    predicted), ``"recall of 'c'"`` and ``"F1 of 'c'"`` (no slice of the class: left out of
    macro-F1 and balanced accuracy), ``"ROC AUC of 'c'"`` (K classes: the class absent, or no
    slice of any other class). ``recall_per_data_class`` is not listed: its ``n`` (0) says
    why a data class has no recall (none left); a data class left out by a class map has no
    entry there (``Comparison.describe``'s "left out" names it).
    """
    names = list(result["class_names"])
    counts = np.bincount(np.asarray(y, np.int64), minlength=len(names))
    removed = removed or {}

    def none_of(absent: list[str]) -> str:
        if absent and set(absent) <= set(not_in_data):
            return f"these data hold no class {' or '.join(map(repr, absent))}"
        gone = [f"{removed[n]} of class {n!r}" for n in absent if removed.get(n)]
        if unit:
            told = {n: (unpooled or {})[n] for n in absent if n in (unpooled or {})}
            why = "; ".join((f"{n!r}: " if len(absent) > 1 else "") + t for n, t in told.items())
            return f"no {unit} of class {' or '.join(map(repr, absent))}" + (
                f" ({why})" if why else ""
            )
        if not gone:
            return f"no readable slice of class {' or '.join(map(repr, absent))}"
        return (
            f"no slice of class {' or '.join(map(repr, absent))} left: the readable ones "
            f"({', '.join(gone)}) were removed as near-duplicates of training slices "
            "(--keep-duplicates scores them)"
        )

    def undefined(value: Any) -> bool:
        return isinstance(value, float) and not math.isfinite(value)

    absent_all = [n for k, n in enumerate(names) if counts[k] == 0]
    why: dict[str, str] = {}
    for key in HEADLINE_METRICS:
        if not undefined(result.get(key)):
            continue
        if len(names) == 2 and key in mx.BINARY_CI_NEEDS:  # the classes the metric needs
            absent = [names[k] for k in mx.BINARY_CI_NEEDS[key] if counts[k] == 0]
        elif key == "macro_roc_auc":
            absent = absent_all
        elif key in ("macro_f1", "balanced_accuracy") and len(names) - len(absent_all) < 2:
            absent = absent_all  # a mean over classes needs two of them present
        else:
            absent = []
        why[key] = none_of(absent) if absent else "undefined on these data"
    for key, value in result.items():  # any other top-level number
        if key not in why and undefined(value):
            why[key] = "undefined on these data"
    binary = len(names) == 2 and "sensitivity" in result
    for k, name in enumerate(names):
        pc = result.get("per_class", {}).get(name)
        if pc is None:
            continue
        if undefined(pc.get("precision")):
            why[f"precision of {name!r}"] = f"class {name!r} never predicted" + (
                f" for any {unit}" if unit else ""
            )
        for metric, label in (("recall", "recall"), ("f1", "F1")):
            if undefined(pc.get(metric)):
                why[f"{label} of {name!r}"] = none_of([name])
        if not binary and undefined(pc.get("roc_auc")):
            others = [n for j, n in enumerate(names) if j != k]
            why[f"ROC AUC of {name!r}"] = (
                none_of([name]) if counts[k] == 0 else none_of(others) + " (one-vs-rest)"
            )
    return why


def evaluate(
    model_path: str | os.PathLike[str],
    data: str | os.PathLike[str] | None = None,
    *,
    split: str | None = None,
    out: str | os.PathLike[str] | None = None,
    batch_size: int = 32,
    class_map: tuple[tuple[str, tuple[str, ...]], ...] = (),
    remove_duplicates: bool = True,
    n_boot: int = 1000,
    read_options: ReadOptions | None = None,
    show_paths: bool = False,
) -> dict[str, Any]:
    """Metrics and plots of a trained model on a split of its store or on any labelled data.

    The slices are scored, and so are their units: the result's ``per_series`` and
    ``per_patient`` (``grouped_levels``: the slices' probabilities pooled per DICOM series /
    NIfTI volume / manifest group, and per patient, with ``mriscan predict``'s rule, then
    scored) with their pooled rows in ``series_predictions.csv`` / ``patient_predictions.csv``;
    a level the data do not have (JPEG/PNG only, no Patient ID) says why instead.

    Parameters
    ----------
    model_path : path
        ``best_model.keras``; when it sits in a run folder (``RUN/models/``), ``RUN/split.json``
        says which store and samples each split holds.
    data : path, optional
        A store or a class-folder directory. Default: the store recorded in ``split.json``
        (at its absolute path, else where it lay from the run folder at training: a project
        folder moved whole).
        It may hold one class (a tumor-only or healthy-only collection, or a ``class_map``
        with one target; ``mriscan.tasks.compare_classes`` matches it): the metrics that need
        another class are NaN and listed in ``undefined``, and the result's ``one_class``
        (``one_class_summary``) says what was computed, with the false-positive rate of
        healthy slices.
    split : {"test", "val", "train", "all"}, optional
        Which samples of the training store to use. Default: "test" on the training store,
        "all" on other data. Other data are always used whole; a split other than "all"
        asked for on them is warned of.
    out : path, optional
        Where ``evaluation/`` is written (default: the model's run folder).
    class_map : tuple, optional
        Data classes → model classes (``mriscan.config.parse_class_map``; one target is
        allowed here); by default the classes are matched by name, or as tumor vs no tumor.
    remove_duplicates : bool
        Drop (and count) slices of other data that near-duplicate a training slice of the model
        (thumbnail correlation > 0.95), and then those of a patient among the model's training
        and validation patients (``ModelCard.train_patients``: keyed Patient ID hashes, which
        match only under the same identifier key; ``same_patient_removed`` in the result says
        how many, or why it could not be checked; ``same_patient_removed.csv`` lists them).
    n_boot : int
        Bootstrap draws (over duplicate groups) of the 95% CIs.

    read_options : mriscan.readers.ReadOptions, optional
        How DICOM and NIfTI files of a folder ``data`` are read (``DicomConfig``,
        ``NiftiConfig``, ``overrides``); what it leaves open is read as the model card records
        for the training data (``ModelCard.reader``; the defaults for an older card). A store
        ``data`` read otherwise than the training data is evaluated with a warning.
    show_paths : bool
        Name the files of a folder ``data`` that could not be read by path. By default those
        in a folder holding DICOM or NIfTI files (a path there may name the patient) are named
        as ``mriscan predict`` names them (``unreadable_rows``): scanner files
        ``dicom/<series>/file-<h>`` / ``nifti/file-<h>``, other files and folders
        ``other/file-<h>`` / ``other/folder-<h>``, the paths removed from their reasons too;
        JPEG/PNG files, and everything in data without scanner files, keep their paths.
        Slices are always named by their store source (scanner slices by pseudonym). The
        result's ``unreadable_of_absent_classes`` counts the unreadable files that could,
        once fixed, add a slice of a scored class that has none (``_unreadable_of_absent``).

    Raises
    ------
    MriscanError
        If no data can be found, or a split is asked for that was not recorded.
    ConfigError
        If the data were preprocessed differently from the model, or their classes cannot be
        matched to the model's.
    """
    from mriscan.model import load_model

    if split is not None and split not in SPLITS:
        raise ConfigError(f"split must be one of {SPLITS}. Received: {split!r}.")
    model_path = Path(model_path)
    run = RunLayout.of_model(model_path)
    model, card = load_model(model_path)
    recorded = _recorded_split(run, card, model_path)
    own = data is None
    if own:
        if recorded is None:
            raise MriscanError(
                "No DATA given, and "
                + (
                    f"{run.split} is missing"
                    if run is not None
                    else f"{model_path} does not lie in a run folder (RUN/models/ beside "
                    "RUN/split.json)"
                )
                + ", so the model's training store and test split are unknown. Give DATA "
                "(a store or labelled folder; other data are scored whole), or evaluate the "
                "model where train wrote it."
            )
        data = recorded["store"]
        beside = recorded.get("store_from_run")
        if not is_store(data) and isinstance(beside, str) and is_store(run.root / beside):
            # the run folder and its store moved together (a project folder moved or copied)
            log.info("the training store is not at %s; using %s, where it lies from the run "
                     "folder as it did at training", data, run.root / beside)  # fmt: skip
            data = str(run.root / beside)
        if not is_store(data):
            typed = ["mriscan", "evaluate", "STORE", "--model", str(model_path)]
            typed += ["--split", split] if split is not None else []
            raise MriscanError(
                f"The model's training store {data} (recorded in {run.split}) is not there "
                "(moved or deleted). Give its place as DATA, e.g. "
                f"{shlex.join(typed)}: the store is recognised wherever it now lies."
            )
    dest = Path(out) if out is not None else (run.root if run is not None else model_path.parent)
    ev = RunLayout(dest).evaluation
    with scratch_dir("eval") as tmp:
        # the data side may hold one class (a tumor-only collection): the map may leave one
        class_map = check_class_map(class_map, min_targets=1)
        used = class_map_sources(class_map)
        store, unreadable = _open_data(data, card, Path(tmp), read_options, show_paths, used)
        with store:
            if store.config != card.preprocess:
                raise ConfigError(
                    f"Store {data} was preprocessed with {store.config}, the model "
                    f"with {card.preprocess}; ingest the data again with the "
                    "model's settings (or pass a class folder)."
                )
            _warn_reader(store, card, data)
            same_store = _is_training_store(data, store, recorded)
            if split is None:
                split = "test" if same_store else "all"
            elif split != "all" and not same_store:
                log.warning(
                    "split %r names part of the model's training store; %s is other data, "
                    "so all of it is scored (less near-duplicates of the model's training "
                    "and validation slices)",
                    split,
                    data,
                )
                split = "all"
            elif same_store and split in ("train", "all"):
                log.warning(
                    "split %r of the training store holds the slices the model was trained "
                    "on: its numbers say how well it fits them, not how it does on unseen "
                    "slices (that is the test split, the default)",
                    split,
                )
            if split == "all":
                idx = store.active_indices()  # retired samples (file gone) are not scored
            else:
                if recorded is None or split not in recorded:
                    raise MriscanError(
                        f"Split {split!r} needs the run's split.json; use --split all."
                    )
                idx = _recorded_indices(store, recorded[split], split)
            cmp = compare_classes(store.class_names, card.class_names, card.healthy, class_map)
            y_all = cmp.label_map[store.labels[idx].astype(np.int64)]
            idx, y = idx[y_all >= 0], y_all[y_all >= 0]
            copies = _exact_copies(store, idx)
            # the model's own data among other data: removed, or counted with --keep-duplicates
            mine = (
                None if same_store else _own_data(model_path, card, store, idx, remove_duplicates)
            )
            removing = remove_duplicates and mine is not None
            none = np.zeros(idx.size, bool)
            removed = mine.near if removing else none
            same = mine.patient if removing else none
            recs, names = store.index.records, store.class_names
            dropped = [(recs[i].source, names[store.labels[i]]) for i in idx[removed]]
            same_rows = [(recs[i].source, names[store.labels[i]]) for i in idx[same]]
            # y holds the scored classes' labels (the model's, or tumor / no tumor)
            gone = np.bincount(y[removed], minlength=len(cmp.class_names))
            removed_of = {n: int(c) for n, c in zip(cmp.class_names, gone, strict=True)}
            same_patients = mine.patients if removing else 0
            why_not = mine.why_not if mine is not None else ""
            # exact copies of a removed slice go with it: not "scored once, as that file"
            gone_src = {recs[i].source for i in idx[removed | same]}
            copies = [(*c, c[1] not in gone_src) for c in copies]
            idx, y = idx[~(removed | same)], y[~(removed | same)]
            # the model's own data: near-duplicates of its slices, then slices of its patients
            n_own = len(dropped) + len(same_rows)
            if not idx.size:
                raise MriscanError(
                    f"Nothing left to evaluate in {data} ({len(dropped)} near-duplicates of "
                    f"training slices removed, {len(same_rows)} slices of training patients "
                    f"removed, {len(unreadable)} unreadable files)."
                    + _own_data_hint(n_own, n_own + idx.size, recorded, patients=len(same_rows))
                )
            if 2 * n_own > n_own + idx.size:
                hint = _own_data_hint(n_own, n_own + idx.size, recorded, patients=len(same_rows))
                log.warning(hint.strip())
            kept = kept_same = None
            kept_rows: list[tuple[str, str, str]] = []
            if mine is not None and not removing:  # --keep-duplicates: counted, all scored
                kept = int(mine.near.sum()) if mine.near_checked else None
                kept_same = int(mine.patient.sum()) if not mine.why_not else None
                whys = (("near-duplicate", mine.near), ("training patient", mine.patient))
                kept_rows = [
                    (recs[i].source, names[store.labels[i]], why)
                    for why, mask in whys
                    for i in idx[mask]
                ]
                n_kept = (kept or 0) + (kept_same or 0)
                if 2 * n_kept > idx.size:
                    hint = _own_data_hint(n_kept, idx.size, recorded, kept=True, patients=kept_same)
                    log.warning(hint.strip())
            prob = predict_store(model, store, idx, batch_size=batch_size, tta=card.tta)
            groups = store.groups[idx]
            data_labels = store.labels[idx].astype(np.int64)
            sources = [store.index.records[i].source for i in idx]
            group_keys = [store.index.records[i].group_key for i in idx]
            data_names = store.class_names
            flagged = flagged_slices(store, idx)
            no_anatomy = no_anatomy_mask(store, idx)
    if flagged:  # scored like the others, as predict and explain warn of them (tester30)
        log.warning(
            "scored slices stored with a warning: %s (e.g. %s); they are scored like the "
            "others (flagged_slices in metrics.json)",
            " and ".join(f"{len(v)} {k}" for k, v in flagged.items()),
            next(iter(flagged.values()))[0],
        )
    # the data classes scored: one a class map leaves out is never read into the counts
    # below, so it is not listed with a 0 there (``comparison`` names it as left out)
    scored_names = [n for k, n in enumerate(data_names) if cmp.label_map[k] >= 0]
    scoring = Scoring(cmp, card, data_names, n_boot)
    result = _score(scoring, y, prob, groups, data_labels)
    undefined = _undefined(result, y, removed_of, not_in_data=_not_in_data(cmp))
    levels = grouped_levels(
        scoring, y, prob, groups, data_labels, sources, group_keys, no_anatomy=no_anatomy
    )
    result.update(
        n_files=int(y.size) + len(dropped) + len(same_rows) + len(unreadable) + len(copies),
        n_unreadable=len(unreadable),
        unreadable=unreadable,
        undefined=undefined,
        data=str(data),
        split=split,
        model=str(model_path),
        # the model file's bytes: `train` into the same run folder removes an evaluation whose
        # model it replaced; a reader compares it with the card's model_sha256
        model_sha256=card.model_sha256 or file_sha256(model_path),
        comparison=cmp.describe(),
        threshold_rule=card.threshold_rule,
        near_duplicates_removed={
            # False: not looked for (the training store itself, or no training thumbnails)
            "checked": mine is not None and mine.near_checked,
            "threshold": DEFAULT_THRESHOLD,
            "count": len(dropped),
            "per_class": {n: sum(1 for _, c in dropped if c == n) for n in scored_names},
            # --keep-duplicates: how many scored slices are near-duplicates of training slices
            # (None: not asked to keep them, or the model has no training thumbnails)
            "kept": kept,
        },
        same_patient_removed={
            # checked: removed, or (--keep-duplicates) counted as kept
            "checked": mine is not None and not why_not,
            "why_not": why_not,
            "count": len(same_rows),
            "patients": same_patients,
            "per_class": {n: sum(1 for _, c in same_rows if c == n) for n in scored_names},
            # --keep-duplicates: how many scored slices, not near-duplicates, are of training or
            # validation patients (None: not asked to keep them, or it cannot be checked)
            "kept": kept_same,
            "rule": "slices whose keyed Patient ID hash is that of a training or validation "
            "slice of the model (same identifier key), among those left after the "
            "near-duplicates (listed in same_patient_removed.csv)",
        },
        flagged_slices={
            "counts": {k: len(v) for k, v in flagged.items()},
            "rule": f"uniform: no anatomy ({UNIFORM_RULE}); noise: no anatomy ({NOISE_RULE}); "
            f"thin: a side under {MIN_SIDE} "
            "pixels; stored with a warning by ingest and scored like the other slices",
        },
        exact_duplicates={
            "count": len(copies),
            "per_class": {n: sum(1 for _, _, c, _ in copies if c == n) for n in scored_names},
            # copies of a slice removed as the model's own data: removed with it, not scored
            "removed_with_original": sum(1 for *_, scored in copies if not scored),
            "rule": "a file with the same bytes as another is scored once, as that file, or "
            "removed with it when that file is removed as the model's own data (listed in "
            "exact_duplicates.csv, column original_scored); not counted in n",
        },
    )
    result["model_class_names"] = list(card.class_names)
    present = np.unique(y)
    result["unreadable_of_absent_classes"] = _unreadable_of_absent(
        unreadable, data_names, cmp, present
    )
    # the data classes of a scored class left without slices that lost slices to the removals
    # (near-duplicates, training patients): keeping those, not fixing files, gives it slices
    removed = {
        n: result["near_duplicates_removed"]["per_class"].get(n, 0)
        + result["same_patient_removed"]["per_class"].get(n, 0)
        for n in scored_names
    }
    absent = set(range(len(cmp.class_names))) - set(present.tolist())
    result["classes_emptied_by_removal"] = [
        n for j, n in enumerate(data_names) if int(cmp.label_map[j]) in absent and removed.get(n)
    ]
    if present.size == 1:
        k = int(present[0])
        result["one_class"] = one_class_summary(
            result,
            str(cmp.class_names[k]),
            data_classes=[data_names[int(j)] for j in np.unique(data_labels)],
            model_classes=cmp.model_classes_of(k),
        )
    for name, (section, rows) in levels.items():
        result[f"per_{name}"] = section
        section.pop("_decisions", None)
        if rows is not None:
            ev.root.mkdir(parents=True, exist_ok=True)
            write_unit_rows(ev.root / section["predictions"], rows, card.class_names)
    _write(ev, result, cmp, y, prob, sources, dropped, unreadable, result.pop("_decisions"))
    with open(ev.root / "same_patient_removed.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["source", "class"])
        w.writerows(same_rows)
    # --keep-duplicates: which scored slices are the model's own (header only otherwise, so
    # that an earlier evaluation's list in this folder does not stay beside this one's)
    with open(ev.root / "own_data_kept.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["source", "class", "why"])
        w.writerows(kept_rows)
    with open(ev.root / "exact_duplicates.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["source", "same_bytes_as", "class", "original_scored"])
        w.writerows(copies)
    return result


def one_class_summary(
    result: dict[str, Any],
    name: str,
    *,
    data_classes: Sequence[str] = (),
    model_classes: Sequence[str] = (),
) -> dict[str, Any]:
    """What an evaluation of slices of one class only (an external tumor-only or healthy-only
    collection, or every slice of the other class removed) could compute.

    ``result``: the metrics of ``evaluate`` (NaN where undefined, ``ci95`` per headline
    metric); ``name``: the one class scored (``Comparison.class_names``: a model class, or
    ``tumor`` for any tumor class of a K-class model); ``data_classes``: the data's classes
    whose slices were scored (e.g. ``["notumor"]``); ``model_classes``: the model's classes
    ``name`` stands for (``Comparison.model_classes_of``: e.g. ``["no"]``, or a K-class
    model's tumor types for ``tumor``). Returns ``class`` (``name``), ``data_classes``,
    ``model_classes`` (as given, lists), ``defined`` and ``undefined`` (the headline metrics,
    ``HEADLINE_METRICS``, each list in that order: the undefined ones are those that need a
    slice of another class) and, when
    the specificity is defined (healthy slices only), ``false_positive_rate`` = 1 −
    specificity with its 95% CI ``false_positive_rate_ci95`` (the bootstrap CI of the
    specificity, mirrored): the share of healthy slices the model calls a tumor.
    """

    def defined(key: str) -> bool:
        v = result.get(key)
        return isinstance(v, float) and math.isfinite(v)

    keys = [k for k in HEADLINE_METRICS if k in result]
    out: dict[str, Any] = {
        "class": name,
        "data_classes": list(data_classes),
        "model_classes": list(model_classes),
        "defined": [k for k in keys if defined(k)],
        "undefined": [k for k in keys if not defined(k)],
    }
    if defined("specificity"):
        out["false_positive_rate"] = 1.0 - result["specificity"]
        lo, hi = result.get("ci95", {}).get("specificity", [math.nan, math.nan])
        out["false_positive_rate_ci95"] = [1.0 - hi, 1.0 - lo]
    return out


def _unreadable_of_absent(
    unreadable: Sequence[dict[str, Any]],
    data_names: Sequence[str],
    cmp: Comparison,
    present: np.ndarray,
) -> int:
    """How many unreadable files, once fixed, could add a slice of a scored class that has
    none: those whose data class maps to such a class, or whose data class has no readable
    file at all (not in ``data_names``, so its mapping is unknown). A file of a class that
    already has slices, or of a class left out by the map, cannot help (tester 18: the
    advice to fix a tumor-only set's truncated tumor file)."""
    absent = set(range(len(cmp.class_names))) - {int(k) for k in present}
    count = 0
    for u in unreadable:
        label = u.get("label", "")
        if label not in data_names or int(cmp.label_map[list(data_names).index(label)]) in absent:
            count += 1
    return count


def _not_in_data(cmp: Comparison) -> tuple[str, ...]:
    """The scored classes (``cmp.class_names``) that no class of the data is mapped to."""
    mapped = set(cmp.label_map.tolist())
    return tuple(n for k, n in enumerate(cmp.class_names) if k not in mapped)


def _undefined(
    result: dict[str, Any], y: np.ndarray, removed: dict[str, int] | None = None, **unit: Any
) -> dict[str, str]:
    """``undefined_metrics`` of ``result`` on labels ``y`` (``unit``: its ``unit`` and
    ``unpooled``)."""
    return undefined_metrics(result, y, removed, **unit)


@dataclass(frozen=True)
class Scoring:
    """What scores a model's predictions, the same for slices and for pooled units.

    ``cmp``: how the data's classes meet the model's (``mriscan.tasks.compare_classes``; labels
    ``y`` are ``cmp.class_names`` indices); ``card``: the model's ``ModelCard`` (its
    ``class_names``, ``threshold``, ``healthy``: the decision rule); ``data_names``: the data's
    own class names (recall per data class); ``n_boot``: bootstrap draws of the 95% CIs.
    """

    cmp: Comparison
    card: Any
    data_names: tuple[str, ...]
    n_boot: int


#: what each grouped level of ``grouped_levels`` pools, in words
LEVELS = {
    "series": "DICOM series, NIfTI volumes, manifest groups",
    "patient": "patients by keyed Patient ID hash",
}


#: a unit of each level in words ("no patient of class 'no'"), and what a slice lacks without one
_UNIT_NAME = {"series": "series or volume", "patient": "patient"}
_UNIT_WORD = {"series": "series, volume or manifest group", "patient": "Patient ID"}


def unit_of(source: str, group_key: str, level: str) -> str:
    """The unit a stored slice belongs to at ``level`` ("series" or "patient"), or "" for none.

    ``series``: ``series:<h>`` of a DICOM slice (its source ``dicom/<h>/...``, the unit
    ``mriscan predict`` pools), ``volume:<h>`` of a NIfTI slice (``nifti/<h>#k``), else the
    slice's CSV-manifest group (``manifest:<h>`` in its ``group_key``); ``patient``: the first
    ``patient:<h>`` key of ``group_key`` (``mriscan.splits.patient_keys``). All are keyed
    hashes: no file name or identifier.
    """
    from mriscan.splits import split_keys

    if level == "patient":
        return next(iter(patient_keys(group_key)), "")
    if level != "series":
        raise ConfigError(f"level must be one of {tuple(LEVELS)}. Received: {level!r}.")
    kind, _, rest = source.partition("/")
    if kind == "dicom" and rest:
        return "series:" + rest.split("/", 1)[0]
    if kind == "nifti" and rest:
        return "volume:" + rest.rsplit("#", 1)[0]
    return next((k for k in split_keys(group_key) if k.startswith("manifest:")), "")


def grouped_levels(
    scoring: Scoring,
    y: np.ndarray,
    prob: np.ndarray,
    groups: np.ndarray,
    data_labels: np.ndarray,
    sources: list[str],
    group_keys: list[str],
    no_anatomy: np.ndarray | None = None,
) -> dict[str, tuple[dict[str, Any], list[dict[str, Any]] | None]]:
    """Metrics per series / volume and per patient: the slices' probabilities pooled per unit
    (``unit_of``) with predict's rule for its series / volume rows
    (``mriscan.aggregate.aggregate_rows``, described by ``mriscan.aggregate.pooling_rule``: two
    classes, the positive class's top-3 mean and 1 − that; more, per class, rescaled to sum to
    1; the label by the model's threshold or most probable class), then scored as
    slices are (``_score``: the same metrics, 95% CIs by bootstrap over the units' split
    groups; a metric undefined on the units is NaN and listed in ``undefined``).

    ``scoring``: the model and classes that score (``Scoring``); ``y`` (n,) int: the slices'
    labels as the model's (or tumor / no tumor) classes; ``prob`` (n, K) float: their
    probabilities; ``groups`` (n,) int: split groups; ``data_labels`` (n,) int: labels as
    ``scoring.data_names``; ``sources``, ``group_keys``: the slices' stored
    ``SampleRecord.source`` and ``group_key``; ``no_anatomy`` (n,) bool, optional: the
    slices stored with a flag of no anatomy (uniform or noise), left out of their unit's pool
    as predict leaves them out (``mriscan.sources.no_anatomy_mask``; None: none).

    Returns, per level ("series", "patient"), ``(section, rows)``: ``section`` the metrics
    (``available`` True, ``units`` what was pooled, ``rule``, ``n`` units,
    ``label_rule`` (``UNIT_LABEL_RULE``), ``mixed_labels`` units left out because their slices
    carry labels the rule cannot join, ``labelled_by_tumor_slices`` units of healthy and tumor
    slices labelled with their tumor class,
    ``slices_without_unit``, ``predictions`` the CSV file name) or, when no slice has such a
    unit (JPEG/PNG only; no Patient ID), ``{"available": False, "why": ...}`` and rows None;
    ``rows`` the pooled rows (``aggregate_rows``'s, with ``true``, ``predicted`` and ``group``,
    the split group of the unit's first slice).
    """
    from mriscan.aggregate import aggregate_rows, pooling_rule
    from mriscan.inference import prediction_row

    cmp, card = scoring.cmp, scoring.card
    thr = card.threshold if card.binary else None
    healthy = scored_healthy(cmp)  # the unit-label rule's healthy class
    out: dict[str, tuple[dict[str, Any], list[dict[str, Any]] | None]] = {}
    for level, what in LEVELS.items():
        units = [unit_of(s, k, level) for s, k in zip(sources, group_keys, strict=True)]
        if not any(units):
            why = (
                "JPEG/PNG slices only (no DICOM series, NIfTI volume or manifest group): "
                "no series level"
                if level == "series"
                else "no slice has a Patient ID (JPEG/PNG and NIfTI carry none): no patient level"
            )
            out[level] = ({"available": False, "why": why}, None)
            continue
        members: dict[str, list[int]] = {}
        for i, u in enumerate(units):
            if u:
                members.setdefault(u, []).append(i)
        held = {u: set(y[m].tolist()) for u, m in members.items()}  # each unit's labels
        unit_label = {u: unit_label_of(labels, healthy) for u, labels in held.items()}
        mixed = {u for u, k in unit_label.items() if k is None}
        by_tumor = sum(1 for labels in held.values() if len(labels) > 1) - len(mixed)
        slice_rows = []
        for i, u in enumerate(units):
            if u and u not in mixed:
                row = prediction_row(Path(u), prob[i], card, thr, "")
                row["unit"] = u
                row["no_anatomy"] = bool(no_anatomy is not None and no_anatomy[i])
                slice_rows.append(row)
        rows = aggregate_rows(slice_rows, card=card, threshold=thr)
        first = [members[r["unit"]][0] for r in rows]
        y_u = np.array([unit_label[r["unit"]] for r in rows], np.int64)
        p_u = np.array([[r[f"p_{n}"] for n in card.class_names] for r in rows], np.float64)
        p_u = p_u.reshape(len(rows), len(card.class_names))
        d_u = np.array(
            [_unit_data_label(members[r["unit"]], unit_label[r["unit"]], y, data_labels)
             for r in rows],
            np.int64,
        )  # fmt: skip
        section: dict[str, Any] = {"available": True, "units": what}
        if rows:
            section.update(_score(scoring, y_u, p_u, groups[first], d_u))
            # a class without units may well have readable slices: say where they went
            unpooled = {}
            for k, name in enumerate(cmp.class_names):
                alone = sum(1 for i, u in enumerate(units) if not u and y[i] == k)
                in_mixed = sum(1 for u in mixed for i in members[u] if y[i] == k)
                parts = [f"{alone} readable slice(s) have no {_UNIT_WORD[level]}"] if alone else []
                if in_mixed:
                    parts.append(f"{in_mixed} lie in units left out for mixed labels")
                if parts:
                    unpooled[name] = ", ".join(parts)
            section["undefined"] = _undefined(
                section,
                y_u,
                unit=_UNIT_NAME[level],
                unpooled=unpooled,
                not_in_data=_not_in_data(cmp),
            )
            decided = zip(rows, y_u.tolist(), section["_decisions"], first, strict=True)
            for r, label, pred, i in decided:
                r.update(
                    true=cmp.class_names[label],
                    predicted=cmp.class_names[pred],
                    group=int(groups[i]),
                )
        else:
            section.update(n=0, undefined={"all": "every unit mixes labels"})
        section.update(
            rule=f"{pooling_rule(card.class_names)} (as predict's series/volume rows); label "
            "by the model's threshold or most probable class",
            label_rule=UNIT_LABEL_RULE,
            mixed_labels=len(mixed),
            labelled_by_tumor_slices=by_tumor,
            slices_without_unit=sum(1 for u in units if not u),
            predictions=f"{level}_predictions.csv",
        )
        out[level] = (section, rows)
    return out


#: how ``grouped_levels`` gives a series, volume or patient its true label, in words
UNIT_LABEL_RULE = (
    "a unit's true label is its slices' label; a unit whose slices are healthy and of one tumor "
    "class is of that tumor class (slice-labelled data call a tumor patient's slices without "
    "the tumor healthy); other mixes are left out"
)


def scored_healthy(cmp: Comparison) -> int | None:
    """The index of the healthy class among ``cmp.class_names``: 0 when tumor is scored against
    healthy, the model's healthy class otherwise (a two-class model's negative class unless
    both hold tumors: ``mriscan.tasks``), and for a card that records none (an older model) a
    two-class model's negative class when it is named like a healthy class
    (``mriscan.tasks.healthy_like``: no, notumor, normal, ...); None for tumor types without a
    healthy class (glioma vs meningioma)."""
    from mriscan.tasks import healthy_like

    if cmp.mode == "tumor_vs_healthy":
        return 0
    if cmp.model_healthy is not None:
        return int(cmp.model_healthy)
    binary = len(cmp.class_names) == 2
    return 0 if binary and healthy_like(cmp.class_names[0]) else None


def unit_label_of(labels: set[int], healthy: int | None) -> int | None:
    """The true label of a unit whose slices carry the scored ``labels`` (``UNIT_LABEL_RULE``;
    ``healthy``: the scored healthy class, ``scored_healthy``): their one label; the tumor
    class when they are the healthy class and one tumor class; None (left out) for any other
    mix, e.g. two tumor types."""
    if len(labels) == 1:
        return next(iter(labels))
    if len(labels) == 2 and healthy in labels:
        return next(k for k in labels if k != healthy)
    return None


def _unit_data_label(
    members: Sequence[int], label: int | None, y: np.ndarray, data_labels: np.ndarray
) -> int:
    """The data class of a unit (recall per data class): the one data class of its slices of
    the unit's scored ``label``; −1 when they are several (or the unit is left out)."""
    if label is None:
        return -1
    own = {int(data_labels[i]) for i in members if y[i] == label}
    return own.pop() if len(own) == 1 else -1


def write_unit_rows(
    path: str | os.PathLike[str],
    rows: Sequence[dict[str, Any]],
    class_names: Sequence[str],
    lead: Sequence[str] = (),
) -> None:
    """The pooled rows of ``grouped_levels`` as CSV: the ``lead`` columns (row keys, e.g.
    cross-validation's ``repeat`` and ``fold``), ``unit`` (a keyed hash), ``slices``, ``true``,
    ``predicted``, ``p_<class>`` of the model's ``class_names`` (6 decimals)."""
    keys = [*lead, "unit", "slices", "true", "predicted"]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*keys, *(f"p_{c}" for c in class_names)])
        for r in rows:
            w.writerow([*(r[k] for k in keys), *(f"{r[f'p_{c}']:.6f}" for c in class_names)])


def _exact_copies(store: ImageStore, idx: np.ndarray) -> list[tuple[str, str, str]]:
    """``(file, the stored file it copies, class)`` for every file the store holds once because
    its bytes equal those of a sample in ``idx`` (the ingest's exact-duplicate list)."""
    recs = store.index.records
    wanted = {int(i) for i in idx}
    out = []
    for d in store.index.duplicates:
        pos = int(d["duplicate_of"])
        if pos in wanted and d["source"] != recs[pos].source:
            out.append((d["source"], recs[pos].source, store.class_names[store.labels[pos]]))
    return out


def _is_training_store(data: Any, store: ImageStore, recorded: dict | None) -> bool:
    """Whether ``data`` is the model's training store: the path ``split.json`` records (both
    resolved, so a relative path, a link or another working folder still match), or a store
    holding the recorded slices (pixel SHA-256s) at the recorded positions of every part: the
    training store moved or copied. A class folder is never it (its slices are ingested anew)."""
    if recorded is None or not is_store(data):
        return False
    said, given = str(recorded.get("store", "")), str(data)
    if "://" in said or "://" in given:  # URLs: compared as written
        if said == given:
            return True
    elif said and Path(said).resolve() == Path(given).resolve():
        return True
    recs = store.index.records
    parts = [recorded[p] for p in SPLITS if isinstance(recorded.get(p), dict)]
    if not parts:
        return False
    for part in parts:
        idx, expected = part.get("indices"), part.get("pixel_sha256")
        if not expected or idx is None or len(idx) != len(expected):
            return False  # an older split.json without checksums: by path only
        if any(not 0 <= int(i) < len(recs) for i in idx):
            return False
        if any(recs[int(i)].pixel_sha256 != h for i, h in zip(idx, expected, strict=True)):
            return False
    return True


def _own_data_hint(
    removed: int,
    total: int,
    recorded: dict | None,
    *,
    kept: bool = False,
    patients: int | None = 0,
) -> str:
    """A sentence for when most of the data are the model's own (more than half of ``total``):
    ``removed`` slices that near-duplicate its training and validation slices or, ``patients``
    of them, are slices of its training and validation patients; else "". ``recorded``: the
    run's split.json (None: the held-out test split is not known here). ``kept``: the slices
    were scored (``--keep-duplicates``), not removed."""
    if 2 * removed <= total:
        return ""
    scored = " (scored: --keep-duplicates)" if kept else ""
    patients = patients or 0
    ask = (
        f" {removed} of {total} slices are the model's own{scored}: {removed - patients} "
        f"near-duplicate its training or validation slices, {patients} more are of its "
        "training or validation patients. Are these the data it was trained on? "
    )
    if recorded is None:
        return ask + (
            "Its held-out test split is recorded only in its run folder (RUN/split.json "
            "beside RUN/models/): evaluate the model there, without DATA, to score it."
        )
    if is_store(recorded.get("store", "")):
        return ask + "To score its held-out test split, run evaluate without DATA."
    return ask + (
        f"To score its held-out test split, give its training store as DATA (recorded at "
        f"{recorded.get('store')}, which is not there now)."
    )


def _recorded_split(run: RunLayout | None, card: Any, model_path: Path) -> dict | None:
    """The run's split.json, checked to belong to this model."""
    if run is None or not run.split.is_file():
        return None
    recorded = read_json(run.split, "the split of the training run")
    made_for = recorded.get("model_sha256") if isinstance(recorded, dict) else None
    if made_for and card.model_sha256 and made_for != card.model_sha256:
        raise MriscanError(
            f"{run.split} was written for another model than {model_path} (a later "
            "run was interrupted?); retrain, or pass DATA with --split all."
        )
    return recorded


def _open_data(
    data: Any,
    card: Any,
    tmp: Path,
    read_options: ReadOptions | None = None,
    show_paths: bool = False,
    used: tuple[str, ...] | None = None,
) -> tuple[ImageStore, list[dict[str, str]]]:
    """A store of the data: the store itself, or class folders ingested into ``tmp`` with the
    model's preprocessing. Returns the store and the rows of the files that could not be read
    (``unreadable_rows``, keyed with the identifier key the data were ingested with).
    ``used``: the class folders the class map names (None: all); an empty one outside them is
    not refused."""
    if is_store(data):
        return ImageStore.open(data), []
    from mriscan.ingest import IngestConfig, ingest
    from mriscan.keys import KEY_FILE_ENV, identifier_key, key_file_path
    from mriscan.scan import new_salt

    # the user's identifier key if there is one (training patients are recognised only under
    # the key the model's training data were hashed with), never created for a store that is
    # thrown away: a new key could not match the model card's, and a mistyped
    # $MRISCAN_KEY_FILE would be left holding a stray key. Without one: a key of this run only
    key_path = key_file_path()
    if key_path.exists():
        key = identifier_key(key_path)
    else:
        # a warning where $MRISCAN_KEY_FILE names the missing file (likely a typo); a user who
        # never made a key is only told
        log.log(
            logging.WARNING if os.environ.get(KEY_FILE_ENV) else logging.INFO,
            "no identifier key file at %s ($%s): these data's ids are hashed with a key of "
            "this run only (none was created), so training patients cannot be recognised",
            key_path,
            KEY_FILE_ENV,
        )
        key = new_salt()
    # scanner files: read as the model's training data were, unless chosen otherwise
    ro = settings_for_model(card.reader, read_options, kinds=card.train_kinds)
    cfg = IngestConfig(
        preprocess=card.preprocess,
        dicom=ro.dicom,
        nifti=ro.nifti,
        used_classes=used,
        min_classes=1,  # one class may be scored (a tumor-only collection); a model needs two
    )
    report = ingest(Path(data), tmp / "eval.zarr", cfg, key=key)
    if report.read_notes:  # by count: the files' paths may name the patient
        notes = sorted({n for _, n in report.read_notes})
        log.warning("%d file(s) read with a note: %s", len(report.read_notes), "; ".join(notes[:3]))
    rows = []
    if report.skipped:
        # the key of the store's slice names, so a failed instance's dicom/<series>/ is that
        # of its series' slices in predictions.csv
        rows = unreadable_rows(data, report.skipped, salt=key, show_paths=show_paths, used=used)
    store = ImageStore.open(tmp / "eval.zarr")
    if len(store) == 0 and rows:
        store.close()
        raise MriscanError(
            f"None of the {len(rows)} files in {data} could be read (e.g. {rows[0]['path']}: "
            f"{rows[0]['error']})."
        )
    return store, rows


def unreadable_rows(
    data: str | os.PathLike[str],
    skipped: Sequence[tuple[str, str]],
    *,
    salt: bytes,
    show_paths: bool = False,
    used: Sequence[str] | None = None,
) -> list[dict[str, str]]:
    """The files and folders an ingest of ``data`` did not store (``IngestReport.skipped``:
    ``(name relative to the ingest's root, reason)``), named by ``mriscan predict``'s rule.

    ``data``: the class-folder tree or CSV manifest ingested (the root is the folder, or the
    manifest's folder). DICOM/NIfTI files are named by
    ``mriscan.scan_predict.failed_file_name`` (``dicom/<series>/file-<h>``,
    ``nifti/file-<h>``), files of no input kind and folders that cannot be listed by
    ``mriscan.scan_predict.problem_rows`` (``other/file-<h>``, ``other/folder-<h>`` below a
    folder holding scanner files, else their paths); JPEG/PNG files keep their paths; with
    ``show_paths`` all are named by path. ``salt``: the key of the pseudonyms (bytes, at least
    16). A reason that names other files of ``data`` (a label conflict, the stray files of a
    series) names them the same way. ``used``: the class folders the ingest used
    (``IngestConfig.used_classes``).

    Returns
    -------
    list of dict
        ``path``, ``label`` (the file's class: its class folder or manifest label; "" when
        unknown), ``error``, and ``level`` "file" for the rows named by pseudonym; in the order
        of ``skipped``.
    """
    from mriscan.io import display_path, relative_name, scan_class_folders, scan_manifest
    from mriscan.readers import InputRead
    from mriscan.scan_predict import failed_file_name, problem_rows

    data = Path(data)
    manifest = not data.is_dir()
    # skipped names are relative to ingest's root: the folder, or the manifest's (resolved) one
    root = data.resolve().parent if manifest else data
    if manifest:
        listed = scan_manifest(data, min_labels=1)
        found = [(SourceFile(e.path, e.kind), e.label) for e in listed.entries]
        others = [u.path for u in listed.unused]
        # a manifest's rows may name folders anywhere: what lies beside its scanner files is
        # named as below a class folder holding them (a patient-named folder stays hidden)
        held = sorted({str(f.path.parent) for f, _ in found if f.kind != "image"})
        label_of = {str(f.path.parent): c for f, c in found}
    else:
        held, label_of = [], {}
    if not manifest:
        listing = scan_class_folders(data, used, min_classes=1)
        found = [(f, c) for c, fs in listing.classes.items() for f in fs]
        others = [u.path for u in listing.unused] + [p for p, _ in listing.unreadable]
    files = [f for f, _ in found]

    def rel(p: Path) -> str:
        # as ingest names the entries (a name that is not UTF-8 keeps its bytes as \xNN)
        return relative_name(p, root)

    by_rel = {rel(f.path): (f.kind, c) for f, c in found}
    real = {rel(p): p for p in [*(f.path for f, _ in found), *others]}  # the files, not names
    known = sorted({*by_rel, *(rel(p) for p in others)}, key=len, reverse=True)

    def name(name_rel: str, why: str) -> tuple[str, str, bool]:
        """(name, reason, named by pseudonym) of one entry."""
        path = Path(os.path.normpath(real.get(name_rel, root / name_rel)))
        kind = by_rel.get(name_rel, ("", ""))[0]
        if kind == "image":
            return display_path(path), why, False
        if kind:
            read = InputRead(path, kind, error=why)
            failed = failed_file_name(read, salt=salt, show_paths=show_paths)
            return failed.name, failed.reason, not show_paths
        row = problem_rows([(path, why)], [root, *held], files, salt=salt, show_paths=show_paths)[0]
        return row["path"], row["error"], "level" in row

    out = []
    for entry, reason in skipped:
        shown, why, private = name(entry, str(reason))
        if private:  # other files of the data that the reason names: by their names too
            for other in known:
                if other != entry and other in why:
                    pseudonym, _, hidden = name(other, "")
                    why = why.replace(other, pseudonym) if hidden else why
        label = by_rel.get(entry, ("", ""))[1]
        if not label and not manifest:
            label = entry.split("/", 1)[0]  # below a class folder
        elif not label:  # beside the files of a folder the manifest labels
            label = label_of.get(str(Path(os.path.normpath(root / entry)).parent), "")
        row = {"path": shown, "label": label, "error": why}
        if private:
            row["level"] = "file"
        out.append(row)
    return out


def _same_patients(card: Any, store: ImageStore, idx: np.ndarray) -> tuple[np.ndarray, int, str]:
    """Slices of ``idx`` whose patient (keyed hash ``patient:<h>`` of the DICOM Patient ID) is
    among the model's training and validation patients (``ModelCard.train_patients``): the
    mask over ``idx``, the number of such patients, and "" or why this cannot be checked (the
    card lists no patients, or these data's IDs were hashed with another identifier key, so
    the same patient would have another hash)."""
    none = np.zeros(idx.size, bool)
    listed = card.train_patients
    if listed is None:
        return (
            none,
            0,
            (
                "the model card lists no training patients (written by an older mriscan, or "
                "trained on a store without an identifier-key fingerprint); retrain to get them"
            ),
        )
    if not store.key_id or store.key_id != listed["key_id"]:
        theirs = store.key_id or "none: an older store with a salt of its own"
        return (
            none,
            0,
            (
                f"these data's patient IDs were hashed with another identifier key (fingerprint "
                f"{theirs}; the model's training data: {listed['key_id']}), so a training patient "
                f"cannot be recognised; point $MRISCAN_KEY_FILE at the training key to check"
            ),
        )
    train = set(listed["patients"])
    keys = store.table.strings("group_key")
    hits = [[p for p in patient_keys(keys[i]) if p in train] for i in idx.tolist()]
    mask = np.array([bool(h) for h in hits], bool).reshape(idx.shape)
    return mask, len({p for h in hits for p in h}), ""


def _warn_reader(store: ImageStore, card: Any, data: Any) -> None:
    """Log when the scanner files of ``store`` were read otherwise than the model's training
    data (both recorded; only settings of the kinds of file the store holds and, where the
    card records them, the model was trained on: ``ModelCard.train_kinds``)."""
    if store.reader_settings is None or card.reader is None or not len(store):
        return
    held = set(store.table.strings("kind")) & {"dicom", "nifti"}
    if card.train_kinds is not None:
        held &= set(card.train_kinds)
    diffs = card.reader.differences(store.reader_settings, held)
    if diffs:
        log.warning(
            "store %s was read with %s; the model's training data with %s",
            data,
            ", ".join(describe_setting(n, new) for n, _, new in diffs),
            ", ".join(describe_setting(n, old) for n, old, _ in diffs),
        )


@dataclass(frozen=True)
class OwnData:
    """Which slices of other data are the model's own (``_own_data``): boolean masks over the
    store indices ``idx`` that were checked.

    ``near``: near-duplicates (``mriscan.duplicates.near_duplicates_of``) of a training or
    validation slice; ``patient``: the others that are slices of a training or validation
    patient (``_same_patients``); ``patients``: how many such patients; ``near_checked``:
    False when the model has no training thumbnails (``near`` is then all False);
    ``why_not``: "" or why patients could not be checked (``patient`` is then all False).
    """

    near: np.ndarray
    patient: np.ndarray
    patients: int
    near_checked: bool
    why_not: str


def _own_data(
    model_path: Path, card: Any, store: ImageStore, idx: np.ndarray, removing: bool
) -> OwnData:
    """The near-duplicate and training-patient checks on the slices ``idx``, done once for
    both uses: removing them (``removing``; the default) or counting them
    (``--keep-duplicates``).

    Raises
    ------
    ModelCardError
        When removing, if the model's training thumbnails do not match it (its message names
        ``--keep-duplicates``); when counting, that is warned of and the near-duplicates are
        not counted.
    """
    try:
        reference = training_signatures(model_path, card)
    except ModelCardError as exc:
        if removing:
            raise ModelCardError(
                f"{exc} Or pass --keep-duplicates (the data are then scored whole: slices the "
                "model was trained on, if they are among them, too)."
            ) from None
        # the remedy that error names is the very flag in use
        log.warning("scored near-duplicates of training slices are not counted: %s", exc)
        reference = None
    if reference is None and removing:
        log.warning(
            "%s was saved without its training thumbnails: near-duplicates of training "
            "slices cannot be removed (retrain to get them)",
            model_path,
        )
    near = np.zeros(idx.size, bool)
    if reference is not None and idx.size:
        near = near_duplicates_of(store.signatures()[idx], reference)
    patient = np.zeros(idx.size, bool)
    same, patients, why_not = _same_patients(card, store, idx[~near])
    patient[~near] = same
    return OwnData(near, patient, patients, reference is not None, why_not)


#: the metrics of a two-class scoring that get a group bootstrap CI: every headline metric
#: ``binary_metrics`` / ``called_metrics`` give (macro-F1 too: it is printed beside them)
BINARY_KEYS = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc", "sensitivity", "specificity")


def _score(
    scoring: Scoring,
    y: np.ndarray,
    prob: np.ndarray,
    groups: np.ndarray,
    data_labels: np.ndarray,
) -> dict[str, Any]:
    """Metrics, 95% CIs over groups, and recall per data class (``scoring.data_names``).

    ``ci95``: per headline key ``[low, high]``, NaN where the metric is undefined or its CI
    rests on fewer than 2 groups (``mriscan.metrics.ci_groups``); ``ci95_groups``: per key,
    how many groups it rests on."""
    cmp, card = scoring.cmp, scoring.card
    if cmp.mode == "same" and card.binary:
        p, thr = prob[:, 1], card.threshold

        def metric(sel):
            return mx.binary_metrics(y[sel], p[sel], threshold=thr, class_names=card.class_names)

        keys = BINARY_KEYS
        pred = (p >= thr).astype(np.int64)
    elif cmp.mode == "same":

        def metric(sel):
            return mx.multiclass_metrics(y[sel], prob[sel], card.class_names)

        keys = ("accuracy", "balanced_accuracy", "macro_f1", "macro_roc_auc")
        pred = prob.argmax(axis=1)
    else:
        h = cmp.model_healthy
        p_tumor = 1.0 - prob[:, h]
        if card.binary:
            pred = (prob[:, 1] >= card.threshold).astype(np.int64)
            thr = card.threshold
        else:
            pred = tumor_calls(prob, h)
            thr = None  # decided by the most probable class: there is no cut

        def metric(sel):
            return called_metrics(y[sel], p_tumor[sel], pred[sel], cmp.class_names)

        keys = BINARY_KEYS
    result = metric(np.arange(y.size))
    if cmp.mode != "same":
        result["threshold"] = thr
    result["_decisions"] = pred.tolist()  # scored label of each slice, for predictions.csv
    # two scored classes (0 negative, 1 positive): a class-conditional metric's CI rests on the
    # groups holding its class; fewer than 2 -> no interval (null), not a zero-width one
    needs = mx.BINARY_CI_NEEDS if len(cmp.class_names) == 2 else None
    result["ci95"] = mx.group_bootstrap_ci(
        metric, groups, keys, n_boot=scoring.n_boot, labels=y, needs=needs
    )
    result["ci95_groups"] = mx.ci_groups(groups, keys, y, needs)
    # data classes a class map leaves out are not scored: not listed (the comparison names them)
    result["recall_per_data_class"] = {
        name: _recall_of_class(cmp, y, pred, data_labels, k)
        for k, name in enumerate(scoring.data_names)
        if cmp.label_map[k] >= 0
    }
    return result


#: how ``tumor_calls`` decides, in words (for reports that print their rule)
TUMOR_CALL_RULE = "tumor when the most probable class is not the healthy one"


def tumor_calls(prob: np.ndarray, healthy: int) -> np.ndarray:
    """A K-class model's tumor vs no tumor call of each slice: 1 (tumor) where its most
    probable class is not ``healthy``, else 0; the call of its label, as ``predict``'s
    ``is_tumor``. ``prob``: (n, K) class probabilities; returns int64 (n,). Used by evaluate's
    and cv's tumor vs no tumor scores, so that their numbers agree."""
    return (np.asarray(prob).argmax(axis=1) != healthy).astype(np.int64)


def called_metrics(
    y: np.ndarray, p_tumor: np.ndarray, pred: np.ndarray, class_names: Sequence[str]
) -> dict[str, Any]:
    """Two-class metrics (``mriscan.metrics.binary_metrics``' keys) whose counts all come from
    the model's own calls ``pred`` (int (n,) in {0, 1}: its threshold, or ``tumor_calls``);
    only the ROC AUC comes from ``p_tumor`` (float (n,), P(class 1)). ``y``: int (n,) in
    {0, 1}; ``class_names``: the two names, negative first."""
    m = mx.binary_metrics(y, p_tumor, threshold=0.5, class_names=tuple(class_names))
    names = m["class_names"]
    counted = mx.binary_metrics(y, pred.astype(np.float64), threshold=0.5, class_names=names)
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "sensitivity", "specificity"):
        m[key] = counted[key]
    m.update(per_class=counted["per_class"], confusion_matrix=counted["confusion_matrix"])
    return m


def _recall_of_class(cmp, y, pred, data_labels, k) -> dict[str, Any]:
    """Share of a data class's slices given their correct scored label."""
    sel = data_labels == k
    n = int(sel.sum())
    return {"n": n, "recall": float((pred[sel] == y[sel]).mean()) if n else float("nan")}


def _write(ev, result, cmp, y, prob, sources, dropped, unreadable, decisions) -> None:
    """metrics.json, plots, predictions.csv and near_duplicates_removed.csv; a plot an earlier
    evaluation into the same folder left and this one does not write (``roc.png`` without
    two scored classes) is deleted (``mriscan.artifacts.remove_stale_plots``)."""
    from mriscan import plots

    ev.root.mkdir(parents=True, exist_ok=True)
    write_json(ev.metrics, result)
    names = list(cmp.class_names)
    plots.save_confusion_matrix(
        np.array(result["confusion_matrix"]),
        names,
        ev.confusion_plot,
        title=f"{result['split']} (n={result['n']})",
    )
    written = [ev.confusion_plot]
    if len(names) == 2 and len(set(y.tolist())) == 2:
        p = prob[:, 1] if cmp.mode == "same" else 1.0 - prob[:, cmp.model_healthy]
        fpr, tpr, _ = mx.roc_curve(y, p)
        plots.save_roc(fpr, tpr, result["roc_auc"], ev.roc_plot)
        written.append(ev.roc_plot)
    remove_stale_plots(ev, written)  # e.g. an earlier two-class evaluation's roc.png
    with open(ev.predictions, "w", newline="") as fh:
        w = csv.writer(fh)
        k = prob.shape[1]
        model_names = result["model_class_names"]
        w.writerow(["source", "label", "predicted", *(f"p_{c}" for c in model_names), "error"])
        for s, label, pred, row in zip(sources, y.tolist(), decisions, prob.tolist(), strict=True):
            w.writerow([s, names[label], names[pred], *(f"{v:.6f}" for v in row), ""])
        for u in unreadable:  # unreadable files: no probabilities, the reason instead
            w.writerow([u["path"], u["label"], *([""] * (k + 1)), u["error"]])  # + predicted
    with open(ev.root / "near_duplicates_removed.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["source", "class"])
        w.writerows(dropped)


#: what to do when the recorded split no longer matches the store (``_recorded_indices``)
_REBUILT_HINT = (
    "Retrain, or give slices the model has not seen as DATA (a labelled folder or another "
    "store: scored whole, less near-duplicates of its training slices); --split all would "
    "score this store's training slices too."
)


def _recorded_indices(store: ImageStore, part: dict[str, Any], name: str) -> np.ndarray:
    """The store positions of a recorded split part, checked against the store's content.

    At the recorded positions when the store still holds the recorded slices there; else, for
    a split.json that records each slice's pixel SHA-256, where the store now holds each of
    them (found by checksum among the active samples: the training store rebuilt from the same
    files plus others, whose positions moved), with a warning. A checksum held by several
    samples (pixel-identical files) is matched to the one of the recorded source file when
    there is one, else to any not matched yet: the same pixels score the same.

    Raises
    ------
    MriscanError
        If the store no longer holds the same slices at those positions and they cannot all
        be found by checksum (rebuilt from other files, or changed since training), saying
        how many are missing and naming one: scoring them would silently mix training slices
        into the test.
    """
    try:
        return _at_recorded_positions(store, part, name)
    except MriscanError as exc:
        if not part.get("pixel_sha256"):
            raise
        found, missing = _found_by_checksum(store, part)
        if found is None and isinstance(exc, _RetiredError):
            raise  # the positions hold, some samples were retired: that error says which
        if found is None:
            total = len(part["pixel_sha256"])
            raise MriscanError(
                f"{len(missing)} of the {total} recorded {name} slices are not in "
                f"{store.location} any more (no sample holds their pixels; e.g. "
                f"{missing[0]}): the store was rebuilt or changed since training. " + _REBUILT_HINT
            ) from exc
    log.warning(
        "%s was rebuilt since training: its positions moved, and the %d recorded %s slices "
        "were found at their new positions by their pixel SHA-256",
        store.location, found.size, name,
    )  # fmt: skip
    return found


def _found_by_checksum(
    store: ImageStore, part: dict[str, Any]
) -> tuple[np.ndarray | None, list[str]]:
    """Positions of the active samples holding the recorded ``pixel_sha256`` of ``part``, in
    the recorded order, each used once (of several holding one checksum, the one of the
    recorded source file first); and the recorded sources (or positions) of the slices no
    sample holds. (None, missing) when some are missing."""
    expected = part["pixel_sha256"]
    sources = part.get("sources") or [f"position {i}" for i in part.get("indices", ())]
    recs = store.index.records
    where: dict[str, list[int]] = {}
    for i in store.active_indices():
        where.setdefault(recs[int(i)].pixel_sha256, []).append(int(i))
    found: list[int] = []
    missing: list[str] = []
    for k, h in enumerate(expected):
        free = where.get(h, [])
        source = sources[k] if k < len(sources) else f"slice {k}"
        if not free:
            missing.append(str(source))
            continue
        mine = next((i for i in free if recs[i].source == source), free[0])
        free.remove(mine)
        found.append(mine)
    return (None, missing) if missing else (np.asarray(found, np.int64), [])


class _RetiredError(MriscanError):
    """Some recorded samples were retired in place (their files moved, overwritten or
    deleted): ``_at_recorded_positions``' most precise refusal."""


def _at_recorded_positions(store: ImageStore, part: dict[str, Any], name: str) -> np.ndarray:
    """The recorded positions of ``part``, when the store holds the recorded slices there
    (``_recorded_indices``' first try); raises ``MriscanError`` saying what differs."""
    idx = np.asarray(part["indices"], np.int64)
    recs = store.index.records
    if idx.size and (idx.min() < 0 or idx.max() >= len(recs)):
        raise MriscanError(
            f"The recorded {name} split names samples up to {int(idx.max())}, but "
            f"{store.location} holds {len(recs)}: the store was rebuilt since training. "
            + _REBUILT_HINT
        )
    retired = np.setdiff1d(idx, store.active_indices())
    if retired.size:
        flags = sorted({f for i in retired for f in recs[int(i)].flags})
        raise _RetiredError(
            f"{retired.size} of the {idx.size} recorded {name} samples of {store.location} were "
            f"retired since training ({', '.join(flags) or 'changed'}: their files were moved, "
            "overwritten or deleted), e.g. position "
            f"{int(retired[0])}. Scoring them would report numbers for slices that no longer "
            "exist. " + _REBUILT_HINT
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
                + _REBUILT_HINT
            )
    return idx
