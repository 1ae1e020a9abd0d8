"""Metrics against hand-computed references on small known cases."""

from __future__ import annotations

import numpy as np
import pytest

from mriscan.metrics import (
    binary_metrics,
    bootstrap_ci,
    confusion_matrix,
    roc_auc,
    roc_curve,
    youden_threshold,
)


def _auc_pairs(y, p):
    pos, neg = p[y == 1], p[y == 0]
    wins = sum((a > b) + 0.5 * (a == b) for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


def test_known_case():
    y = np.array([0, 0, 1, 1, 1, 0])
    p = np.array([0.1, 0.6, 0.8, 0.4, 0.9, 0.2])
    m = binary_metrics(y, p, threshold=0.5)
    # predicted: 0 1 1 0 1 0 -> tp=2 fn=1 tn=2 fp=1
    assert m["confusion_matrix"] == [[2, 1], [1, 2]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["sensitivity"] == pytest.approx(2 / 3) and m["specificity"] == pytest.approx(2 / 3)
    assert m["per_class"]["yes"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["no"]["f1"] == pytest.approx(2 / 3)
    assert m["roc_auc"] == pytest.approx(8 / 9)


@pytest.mark.parametrize("seed", range(10))
def test_auc_equals_pairwise_definition_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 40)
    y[:2] = [0, 1]
    p = rng.integers(0, 6, 40) / 5.0  # many ties
    assert roc_auc(y, p) == pytest.approx(_auc_pairs(y, p))
    fpr, tpr, _ = roc_curve(y, p)
    assert np.trapezoid(tpr, fpr) == pytest.approx(_auc_pairs(y, p))
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1


def test_degenerate_cases():
    assert np.isnan(roc_auc([1, 1], [0.2, 0.3]))
    assert confusion_matrix([0, 1, 1], [0, 0, 1]).tolist() == [[1, 0], [1, 1]]
    with pytest.raises(ValueError, match="only 0 and 1"):
        binary_metrics([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="same length"):
        roc_auc([0, 1], [0.1])


def test_youden_threshold_separates_perfectly_separable_scores():
    y = np.array([0, 0, 0, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.7, 0.8])
    t = youden_threshold(y, p)
    assert 0.3 < t <= 0.7
    assert binary_metrics(y, p, threshold=t)["accuracy"] == 1.0


def test_bootstrap_ci_brackets_the_estimate():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p = np.clip(y * 0.3 + rng.random(200) * 0.7, 0, 1)
    lo, hi = bootstrap_ci(y, p, roc_auc, n_boot=300)
    assert lo < roc_auc(y, p) < hi and hi - lo < 0.2
