"""Per-series / per-volume scores from per-slice probabilities (Keras-free, pure NumPy).

The rule: the **mean of the top-k slice probabilities** of a series (DICOM) or volume (NIfTI),
k = ``TOP_K`` = 3 (all slices when there are fewer). A tumour shows on a few slices of a
volume, so the mean of all slices would drown it in the healthy ones, while the single maximum
lets one noisy slice decide; the mean of the top few is the usual middle ground (as in
multiple-instance learning's top-k pooling). Slices without anatomy (uniform or noise, by
``mriscan.readers.has_no_anatomy``) are left out of the pool unless no slice of the unit has
anatomy: a model's probability for an empty slice says nothing of the patient, and it could
set the unit's verdict (tester31: two blank slices at P 0.87 turned a healthy series into a
tumour; tester32: two slices of noise turned a phantom volume into one).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mriscan.errors import ConfigError
from mriscan.inference import tumor_call

__all__ = ["NO_ANATOMY_LEFT_OUT", "RULE", "TOP_K", "aggregate_rows", "pooling_rule", "top_k_mean"]

TOP_K = 3
#: how a unit's slices without anatomy are treated, said with every rule
NO_ANATOMY_LEFT_OUT = "slices with no anatomy (uniform or noise) left out unless all are"
RULE = f"mean of the top-{TOP_K} slice probabilities ({NO_ANATOMY_LEFT_OUT})"


def pooling_rule(class_names: Sequence[str], k: int = TOP_K) -> str:
    """What ``aggregate_rows`` does to a unit's slice probabilities, in words, for these
    classes (the text that cv and evaluate print and store as ``rule``).

    Two classes ``(negative, positive)``: P(positive) = the mean of the top-``k`` slice
    P(positive), P(negative) = 1 − that (the per-class top-k means are not rescaled: the
    negative class's own top-k mean would pick other slices). More classes: each class's
    top-``k`` mean, rescaled so the K values sum to 1.

    Raises
    ------
    ConfigError
        Fewer than two class names.
    """
    names = tuple(class_names)
    if len(names) < 2:
        raise ConfigError(f"need at least two class names. Received: {list(names)}.")
    if len(names) == 2:
        neg, pos = names
        return (
            f"P({pos}) = the mean of the top-{k} slice P({pos}) of the unit "
            f"(all slices when fewer; {NO_ANATOMY_LEFT_OUT}), P({neg}) = 1 − P({pos})"
        )
    return (
        f"each class's mean of the top-{k} slice probabilities of the unit (all slices when "
        f"fewer; {NO_ANATOMY_LEFT_OUT}), rescaled so the {len(names)} sum to 1"
    )


def top_k_mean(probabilities: Sequence[float] | np.ndarray, k: int = TOP_K) -> float:
    """Mean of the ``k`` largest values (all of them when fewer), as float.

    Raises
    ------
    ConfigError
        ``k < 1``, no values, or a value that is not finite.
    """
    p = np.asarray(probabilities, np.float64).reshape(-1)
    if k < 1:
        raise ConfigError(f"k must be >= 1. Received: k={k}.")
    if p.size == 0 or not np.isfinite(p).all():
        raise ConfigError(f"need at least one finite probability. Received: {p.tolist()}.")
    return float(np.sort(p)[::-1][:k].mean())


def aggregate_rows(
    rows: Sequence[dict[str, Any]],
    *,
    card: Any,
    threshold: float | None,
    k: int = TOP_K,
) -> list[dict[str, Any]]:
    """One row per unit (``row["unit"]`` non-empty) from its slice rows without an error.

    Each class's probability (``p_<class>``) is pooled with ``top_k_mean`` over the unit's
    slices and the pooled values are rescaled to sum to 1 (two classes: ``1 − probability``
    and ``probability``); ``probability`` (two classes: the positive class's top-k mean, as the
    rule says) and ``tumor_probability`` (K classes with a healthy class: the top-k mean of the
    slices' tumor probabilities, a score; not 1 − the pooled ``p_<healthy>``). The label: two
    classes, the positive class when the pooled probability >= ``threshold``; more, the class
    with the largest pooled probability; ``is_tumor`` (with ``tumor_probability``) follows the
    label, as in slice rows (``mriscan.inference.columns_for``). Also ``path`` = the unit's
    name (``row["unit_path"]`` when the slice rows give one, else the unit id), ``level`` =
    ``"series"`` or ``"volume"``, ``unit``, ``slices`` (how many were pooled),
    ``no_anatomy_left_out`` (slice rows with ``row["no_anatomy"]`` true, left out of the pool:
    0 when no slice of the unit has anatomy, all then pooled), ``aggregate`` = the rule and
    ``warning`` = "" (the caller may fill it in). Units in order
    of first appearance.
    """
    names = tuple(card.class_names)
    units: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("unit") and not r.get("error"):
            units.setdefault(r["unit"], []).append(r)
    out = []
    for unit, members in units.items():
        row: dict[str, Any] = {"path": members[0].get("unit_path") or unit}
        pooled_rows = [m for m in members if not m.get("no_anatomy")] or members
        left_out, members = len(members) - len(pooled_rows), pooled_rows
        pooled = [top_k_mean([m[f"p_{n}"] for m in members], k) for n in names]
        # the top-k means of the classes need not sum to 1 (each class picks its own slices):
        # rescale them to a distribution, so the columns read as probabilities
        total = sum(pooled)
        pooled = [v / total for v in pooled] if total > 0 else pooled
        for n, v in zip(names, pooled, strict=True):
            row[f"p_{n}"] = v
        for key in ("probability", "tumor_probability"):
            if key in members[0]:
                row[key] = top_k_mean([m[key] for m in members], k)
        if len(names) == 2:  # the two columns follow the rule's probability exactly
            row[f"p_{names[0]}"], row[f"p_{names[1]}"] = 1 - row["probability"], row["probability"]
        if len(names) == 2:
            row["label"] = names[1] if row["probability"] >= threshold else names[0]
        else:
            row["label"] = names[int(np.argmax(pooled))]
        if "is_tumor" in members[0]:
            row["is_tumor"] = tumor_call(card, row["label"])
        row.update(
            error="",
            warning="",
            level=unit.split(":", 1)[0],
            unit=unit,
            slices=len(members),
            no_anatomy_left_out=left_out,
            aggregate=f"mean of the top-{k} slice probabilities ({NO_ANATOMY_LEFT_OUT})",
        )
        out.append(row)
    return out
