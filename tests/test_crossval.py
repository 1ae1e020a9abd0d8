"""Cross-validation: fold summary, protocol (numbers), artifacts, groups kept in one fold."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from mriscan.config import CVConfig
from mriscan.metrics import binary_metrics
from mriscan.store import ImageStore
from mriscan.training.crossval import cross_validate, summarize_folds
from tests.conftest import fast_config
from tests.test_evaluate import _levels

TINY = fast_config()


def test_summarize_folds_shapes():
    rng = np.random.default_rng(0)
    folds, preds = [], []
    for acc in (0.6, 0.8):
        y = np.array([0, 1] * 50)
        correct = rng.random(100) < acc
        pred = np.where(correct, y, 1 - y)
        prob = np.clip(pred * 0.6 + rng.random(100) * 0.4, 0, 1)
        m = binary_metrics(y, prob, threshold=0.6)
        folds.append({**m, "threshold": 0.6})
        preds.append((y, prob, np.arange(100) // 2))  # groups of two slices
    s = summarize_folds(folds, preds, n_boot=300)
    accs = [f["accuracy"] for f in folds]
    assert s["accuracy"]["mean"] == pytest.approx(np.mean(accs))
    assert s["accuracy"]["std"] == pytest.approx(np.std(accs, ddof=1))
    assert s["accuracy"]["per_fold"] == accs and s["accuracy"]["n_defined"] == 2
    lo, hi = s["accuracy"]["ci95"]
    assert lo < np.mean(accs) < hi and hi - lo < 0.25
    assert s["roc_auc"]["ci95"][0] <= s["roc_auc"]["ci95"][1]
    assert set(s["per_class"]) == {"no", "yes"}


def test_undefined_fold_metrics_are_left_out_of_the_mean():
    y = np.array([0, 0, 1, 1])
    prob = np.array([0.1, 0.2, 0.8, 0.9])
    good = {**binary_metrics(y, prob, threshold=0.5), "threshold": 0.5}
    only_healthy = {**binary_metrics(y[:2], prob[:2], threshold=0.5), "threshold": 0.5}
    preds = [(y, prob, np.arange(4)), (y[:2], prob[:2], np.arange(2))]
    s = summarize_folds([good, only_healthy], preds, n_boot=20)
    assert s["sensitivity"]["per_fold"][1] != s["sensitivity"]["per_fold"][1]  # NaN
    assert s["sensitivity"]["mean"] == 1.0 and s["sensitivity"]["n_defined"] == 1
    # one defined fold says nothing of the spread: std undefined (null), not 0
    assert np.isnan(s["sensitivity"]["std"]) and s["accuracy"]["std"] == 0.0
    assert s["per_class"]["yes"]["recall"]["n_defined"] == 1
    assert np.isnan(s["per_class"]["yes"]["recall"]["std"])


@pytest.mark.slow
@pytest.mark.backend
def test_cross_validate_writes_protocol_and_keeps_groups(small_store, tmp_path):
    s = cross_validate(small_store, CVConfig(folds=3, train=TINY, n_boot=100), out=tmp_path)
    cv = tmp_path / "cv"
    for f in ("metrics.json", "oof_predictions.csv", "roc.png", "confusion_matrix.png"):
        assert (cv / f).is_file(), f
    m = json.loads((cv / "metrics.json").read_text())
    for key in ("accuracy", "roc_auc", "sensitivity", "specificity"):
        assert set(m[key]) == {"mean", "std", "ci95", "per_fold", "n_defined"}
        assert len(m[key]["per_fold"]) == 3
    p = m["protocol"]
    assert p["kind"] == "cv" and p["folds"] == 3 and p["duplicate_threshold"] == 0.95
    # select=last: no checkpoint is chosen on validation; TINY does not pre-train
    assert p["select"] == "last" and "checkpoint" not in p["description"]
    assert p["pretrain_phantoms"] == 0 and p["val_fraction"] == 0.15
    with open(cv / "oof_predictions.csv") as fh:
        rows = list(csv.DictReader(fh))
    with ImageStore.open(small_store) as st:
        assert sorted(int(r["index"]) for r in rows) == list(range(len(st)))
    fold_of_group: dict[str, set] = {}
    for r in rows:
        fold_of_group.setdefault(r["group"], set()).add(r["fold"])
    assert all(len(f) == 1 for f in fold_of_group.values())
    # each fold's recorded test class mix is that of its out-of-fold rows
    assert len(m["fold_class_mix"]) == 3 and m["fold_class_mix_rule"]["skew_points"] == 10
    for mix in m["fold_class_mix"]:
        of_fold = [r["label"] for r in rows if int(r["fold"]) == mix["fold"]]
        assert mix["test"] == {c: of_fold.count(c) for c in ("no", "yes")}
        groups_of = {
            c: {r["group"] for r in rows if int(r["fold"]) == mix["fold"] and r["label"] == c}
            for c in ("no", "yes")
        }
        assert mix["test_groups"] == {c: len(g) for c, g in groups_of.items()}
        assert sum(mix["train"].values()) + sum(mix["val"].values()) == len(rows) - len(of_fold)
    assert s["pooled"]["accuracy"] == pytest.approx(
        np.mean([r["label"] == r["predicted"] for r in rows])
    )
    assert {r["label"] for r in rows} == {"no", "yes"}
    assert "recall_per_data_class" not in s["pooled"]  # no class map merges classes here


@pytest.mark.slow
def test_a_merging_class_map_gets_recall_per_data_class(tmp_path):
    """cv with 'yes=glioma,pituitary;no=notumor' reports, pooled over folds, how many of each
    data class were given their task class (as evaluate does), and prints it."""
    from mriscan.config import parse_class_map
    from tests.conftest import build_class_store

    store = build_class_store(tmp_path / "s.zarr", ["glioma", "notumor", "pituitary"], 12)
    cmap = parse_class_map("yes=glioma,pituitary;no=notumor")
    cfg = CVConfig(folds=2, n_boot=20, train=fast_config(**{"task.class_map": cmap}))
    s = cross_validate(store, cfg, out=tmp_path / "out")
    by_source = s["pooled"]["recall_per_data_class"]
    with open(tmp_path / "out" / "cv" / "oof_predictions.csv") as fh:
        rows = list(csv.DictReader(fh))
    with ImageStore.open(store) as st:
        names = [st.class_names[int(st.labels[int(r["index"])])] for r in rows]
    for name in ("glioma", "notumor", "pituitary"):
        mine = [r for r, n in zip(rows, names, strict=True) if n == name]
        hits = sum(r["label"] == r["predicted"] for r in mine)
        assert by_source[name] == {"n": len(mine), "recall": pytest.approx(hits / len(mine))}


def test_recall_per_data_class_only_when_a_class_stands_for_several():
    from mriscan.tasks import Task
    from mriscan.training.crossval import recall_per_data_class

    merged = Task(
        ("no", "yes"), ("glioma", "notumor", "pituitary", "t2"), np.array([1, 0, 1, -1]), 0
    )
    y = np.array([1, 1, 0, 1, 1])
    pred = np.array([1, 0, 0, 1, 0])
    data = np.array([0, 0, 1, 2, 2])
    got = recall_per_data_class(merged, y, pred, data)
    assert list(got) == ["glioma", "notumor", "pituitary"]  # t2, left out, is not listed
    assert got["glioma"] == {"n": 2, "recall": 0.5} and got["notumor"] == {"n": 1, "recall": 1.0}
    assert got["pituitary"] == {"n": 2, "recall": 0.5}
    none_of_it = recall_per_data_class(merged, y[:3], pred[:3], data[:3])
    assert np.isnan(none_of_it["pituitary"]["recall"]) and none_of_it["pituitary"]["n"] == 0
    plain = Task(("no", "yes"), ("no", "yes"), np.array([0, 1]), 0)
    assert recall_per_data_class(plain, y, pred, np.array([1, 1, 0, 1, 1])) is None


@pytest.mark.backend
def test_a_rerun_with_fewer_folds_leaves_only_its_own_results(tmp_path):
    """What an earlier CV into the same --out left and this one does not write (more folds or
    repeats, a two-class ROC plot) is removed, so summaries and plots cannot pick it up."""
    from mriscan.artifacts import RunLayout
    from tests.conftest import build_class_store

    store = build_class_store(tmp_path / "three.zarr", ["no", "glioma", "pit"], n_per_class=8)
    cv = RunLayout(tmp_path / "out").cv
    for name in ("r0_f2", "r0_f4", "r1_f0", "r0_f0"):  # an earlier 5-fold × 2 run
        (cv.root / name / "models").mkdir(parents=True)
        (cv.root / name / "models" / "best_model.keras").write_bytes(b"old")
    cv.roc_plot.write_bytes(b"old two-class ROC")
    cv.unit_predictions("series").write_text("an earlier CV on DICOM series")
    (cv.root / "notes").mkdir()  # not a fold folder: the user's, left alone
    cfg = CVConfig(folds=2, n_boot=20, train=fast_config(**{"fit.epochs": 1}))
    s = cross_validate(store, cfg, out=tmp_path / "out")
    assert s["fold_dirs"] == ["r0_f0", "r0_f1"]
    assert [p.name for p in cv.fold_dirs()] == ["r0_f0", "r0_f1"]
    assert (cv.root / "r0_f0" / "models" / "best_model.keras").read_bytes() != b"old"
    assert not cv.roc_plot.exists() and cv.confusion_plot.is_file()
    assert (cv.root / "notes").is_dir()
    saved = json.loads(cv.metrics.read_text())
    assert saved["fold_dirs"] == ["r0_f0", "r0_f1"]
    # JPEG/PNG slices: no series or patient level, and no file of one left from before
    assert saved["per_series"]["available"] is False and not cv.unit_predictions("series").exists()
    assert "JPEG/PNG slices only" in saved["per_series"]["why"]
    assert saved["per_patient"]["available"] is False


def _fold_levels(threshold, p_yes, y, series, patients, class_names=("no", "yes")):
    """``grouped_levels`` of one fold's test slices of a two-class model at ``threshold``:
    slice ``i`` of DICOM series ``series[i]`` and patient ``patients[i]`` (split group = the
    patient), label ``y[i]``, P(yes) ``p_yes[i]``."""
    from mriscan.artifacts import ModelCard
    from mriscan.evaluate import Scoring, grouped_levels
    from mriscan.preprocess import PreprocessConfig
    from mriscan.tasks import compare_classes

    card = ModelCard(
        preprocess=PreprocessConfig(size=32), class_names=class_names, threshold=threshold
    )
    cmp = compare_classes(class_names, card.class_names, card.healthy)
    y = np.asarray(y, np.int64)
    p = np.asarray(p_yes, np.float64)
    sources = [f"dicom/{s}/i{i}#0" for i, s in enumerate(series)]
    keys = [f"patient:{q}" if q else "" for q in patients]
    groups = np.array([sum(map(ord, q or s)) for q, s in zip(patients, series, strict=True)])
    scoring = Scoring(cmp, card, class_names, 50)
    return grouped_levels(scoring, y, np.stack([1 - p, p], 1), groups, y, sources, keys)


def _two_folds():
    """Fold 0 at threshold 0.5: series A (yes; P(yes) .9 .8 .1 .7: top-3 mean .8 -> yes),
    B (no; .2 .3 -> .25 -> no), C (no; .8 .7 .3 -> .6 -> yes); A is patient P1, B and C
    patient P2 (no; .8 .7 .3 -> .6 -> yes). Fold 1 at 0.4: D (yes; .3 .6 -> .45 -> yes at
    fold 1's threshold, no at fold 0's; patient P4), E (no; .1 -> no, patient P5)."""
    fold0 = _fold_levels(
        0.5,
        [0.9, 0.8, 0.1, 0.7, 0.2, 0.3, 0.8, 0.7, 0.3],
        [1, 1, 1, 1, 0, 0, 0, 0, 0],
        ["A"] * 4 + ["B"] * 2 + ["C"] * 3,
        ["P1"] * 4 + ["P2"] * 5,
    )
    fold1 = _fold_levels(0.4, [0.3, 0.6, 0.1], [1, 1, 0], ["D", "D", "E"], ["P4", "P4", "P5"])
    folds = [
        {"repeat": 0, "fold": 0, "threshold": 0.5},
        {"repeat": 0, "fold": 1, "threshold": 0.4},
    ]
    return folds, [fold0, fold1]


def test_series_and_patients_are_scored_per_fold_and_summarised_over_folds():
    from mriscan.tasks import resolve_task
    from mriscan.training.crossval import summarize_levels

    folds, levels = _two_folds()
    out = summarize_levels(resolve_task(("no", "yes")), folds, levels, n_boot=50)
    series, rows = out["series"]
    assert series["available"] and series["n"] == 5
    pooled = {r["unit"]: (r["fold"], r["probability"], r["predicted"]) for r in rows}
    assert pooled["series:A"] == (0, pytest.approx(0.8), "yes")
    assert pooled["series:B"] == (0, pytest.approx(0.25), "no")
    assert pooled["series:C"] == (0, pytest.approx(0.6), "yes")
    assert pooled["series:D"] == (1, pytest.approx(0.45), "yes")  # fold 1's own threshold
    assert pooled["series:E"] == (1, pytest.approx(0.1), "no")
    acc = series["accuracy"]
    assert acc["per_fold"] == pytest.approx([2 / 3, 1.0]) and acc["n_defined"] == 2
    assert acc["mean"] == pytest.approx(5 / 6)
    assert acc["std"] == pytest.approx(np.std([2 / 3, 1.0], ddof=1))
    assert series["specificity"]["per_fold"] == pytest.approx([0.5, 1.0])
    assert series["pooled"]["accuracy"] == pytest.approx(4 / 5)
    assert series["pooled"]["confusion_matrix"] == [[2, 1], [0, 2]]
    assert [f["n"] for f in series["per_fold"]] == [3, 2]
    assert "the mean of the top-3 slice P(yes)" in series["rule"]
    assert "P(no) = 1 − P(yes)" in series["rule"] and "rescaled" not in series["rule"]
    patient, rows = out["patient"]
    assert {r["unit"]: r["predicted"] for r in rows} == {
        "patient:P1": "yes", "patient:P2": "yes", "patient:P4": "yes", "patient:P5": "no",
    }  # fmt: skip
    assert patient["accuracy"]["per_fold"] == pytest.approx([0.5, 1.0])
    assert patient["accuracy"]["mean"] == pytest.approx(0.75)


def test_a_metric_undefined_on_a_fold_is_left_out_of_the_unit_mean():
    """Fold 1 holds only 'no' series: its sensitivity and ROC AUC are undefined (NaN, with
    why), the mean is fold 0's; a fold whose slices have no unit at all counts as undefined."""
    from mriscan.tasks import resolve_task
    from mriscan.training.crossval import summarize_levels

    folds, levels = _two_folds()
    levels[1] = _fold_levels(0.4, [0.3, 0.1], [0, 0], ["D", "E"], ["P4", "P5"])
    # a fold of JPEG/PNG slices only (a store of both kinds): no series in it
    levels.append(_levels(("no", "yes"), ("no", "yes"), [0, 1], [[0.6, 0.4], [0.2, 0.8]],
                          ["no/a.png", "yes/b.png"], ["", ""]))  # fmt: skip
    folds.append({"repeat": 0, "fold": 2, "threshold": 0.5})
    series, _ = summarize_levels(resolve_task(("no", "yes")), folds, levels, n_boot=50)["series"]
    sens = series["sensitivity"]
    assert sens["per_fold"][0] == 1.0 and np.isnan(sens["per_fold"][1:]).all()
    assert sens["mean"] == 1.0 and sens["n_defined"] == 1
    assert series["accuracy"]["n_defined"] == 2 and np.isnan(series["accuracy"]["per_fold"][2])
    why = series["per_fold"][1]["undefined"]
    assert why["sensitivity"] == "no series or volume of class 'yes'" and "roc_auc" in why
    assert series["per_fold"][2]["available"] is False and series["per_fold"][2]["fold"] == 2
    assert "JPEG/PNG slices only" in series["per_fold"][2]["why"]


def test_jpeg_only_folds_have_no_unit_level():
    from mriscan.tasks import resolve_task
    from mriscan.training.crossval import summarize_levels

    plain = _levels(("no", "yes"), ("no", "yes"), [0, 1], [[0.6, 0.4], [0.2, 0.8]],
                    ["no/a.png", "yes/b.png"], ["", ""])  # fmt: skip
    folds = [{"repeat": 0, "fold": k, "threshold": 0.5} for k in range(2)]
    out = summarize_levels(resolve_task(("no", "yes")), folds, [plain, plain], n_boot=10)
    assert out["series"] == ({"available": False, "why": plain["series"][0]["why"]}, None)
    assert "JPEG/PNG slices only" in out["series"][0]["why"]
    assert out["patient"][1] is None and "no patient level" in out["patient"][0]["why"]


def _scanner_folder(root, class_names, patients_per_class=4, canvas=32):
    """Class folders of DICOM series of made-up patients (names and IDs in the headers and in
    the folder names); the first patient of each class has two series."""
    from mriscan.synth_scanner import FakePatient, phantom_volume, write_dicom_series

    seed = 0
    for k, label in enumerate(class_names):
        for j in range(patients_per_class):
            name = f"Doe{k}{j}^Jane"
            for _ in range(2 if j == 0 else 1):
                seed += 1
                write_dicom_series(
                    root / label / f"{name.replace('^', '_')}_{seed}",
                    phantom_volume(seed, n_slices=3, canvas=canvas, tumor=k > 0),
                    patient=FakePatient(patient_id=f"MRN{k}{j}XYZ", name=name),
                    seed=seed, series_number=seed,
                )  # fmt: skip
    return root


@pytest.mark.slow
@pytest.mark.backend
@pytest.mark.parametrize("class_names", [("no", "yes"), ("glioma", "meningioma", "notumor")])
def test_cv_scores_dicom_series_and_patients_as_evaluate_pools_them(
    tmp_path, monkeypatch, class_names
):
    """2-fold CV on DICOM series (K = 2 and 3 classes): each fold's series rows are its test
    slices' probabilities pooled by predict's rule (recomputed here from
    oof_predictions.csv), scored at the fold's own decision rule; units are named by keyed
    hash only, never by folder or Patient ID, in the files and on the console."""
    from click.testing import CliRunner

    import mriscan.training.crossval as crossval
    from mriscan.aggregate import top_k_mean
    from mriscan.cli import main

    PATIENTS = 6  # per class: enough split groups that every fold part holds every class
    raw = _scanner_folder(tmp_path / "raw", class_names, patients_per_class=PATIENTS, canvas=96)
    out = tmp_path / "art"
    cfg = CVConfig(
        folds=2, n_boot=50, train=fast_config(**{"fit.epochs": 1, "split.val_fraction": 0.3})
    )
    s = cross_validate(raw, cfg, out=out, store_path=tmp_path / "s.zarr")
    # the console summary of this result (the CLI's printing, without a second training)
    monkeypatch.setattr(crossval, "cross_validate", lambda *a, **k: s)
    r = CliRunner().invoke(main, ["cv", str(raw), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "Per series: DICOM series" in r.output and "Per patient: patients" in r.output
    # each fold's test slices per class, as metrics.json records them, with the fold's recall
    for m, fold in zip(s["fold_class_mix"], s["per_fold"], strict=True):
        line = r.output.split(f"fold {m['fold'] + 1}: ")[1].splitlines()[0]
        for c, k in m["test"].items():
            recall = fold["per_class"][c]["recall"]
            said = "undefined" if recall != recall else f"{recall:.3f}"
            assert f"{c} {k} (" in line and f"recall {said})" in line, line
    from mriscan.aggregate import pooling_rule

    assert f"Per unit, in each fold: {pooling_rule(class_names)}" in r.output
    cv = out / "cv"
    saved = json.loads((cv / "metrics.json").read_text())
    with open(cv / "oof_predictions.csv") as fh:
        slices = list(csv.DictReader(fh))
    with open(cv / "oof_series_predictions.csv") as fh:
        series = {row["unit"]: row for row in csv.DictReader(fh)}
    # by hand: each series' slices, two classes: the top-3 mean of P(yes) and 1 − that;
    # more: the top-3 mean per class, rescaled to sum 1
    members: dict[str, list[dict]] = {}
    for row in slices:
        assert row["source"].startswith("dicom/")
        members.setdefault("series:" + row["source"].split("/")[1], []).append(row)
    assert set(series) == set(members) and saved["per_series"]["n"] == len(members)
    correct: dict[int, list[bool]] = {}
    for unit, rows in members.items():
        if len(class_names) == 2:
            p_yes = top_k_mean([float(r["probability"]) for r in rows])
            pooled = [1 - p_yes, p_yes]
            predicted = class_names[int(p_yes >= float(rows[0]["threshold"]))]
        else:
            tops = [top_k_mean([float(r[f"p_{c}"]) for r in rows]) for c in class_names]
            pooled = [v / sum(tops) for v in tops]
            predicted = class_names[int(np.argmax(pooled))]
        ours = series[unit]
        assert [float(ours[f"p_{c}"]) for c in class_names] == pytest.approx(pooled, abs=2e-6)
        assert ours["predicted"] == predicted and ours["true"] == rows[0]["label"]
        assert ours["fold"] == rows[0]["fold"] and int(ours["slices"]) == len(rows) == 3
        correct.setdefault(int(ours["fold"]), []).append(predicted == rows[0]["label"])
    acc = saved["per_series"]["accuracy"]
    assert acc["per_fold"] == pytest.approx([np.mean(correct[0]), np.mean(correct[1])])
    assert acc["mean"] == pytest.approx(np.mean(acc["per_fold"]))
    patients = (cv / "oof_patient_predictions.csv").read_text()
    assert len(patients.splitlines()) == 1 + PATIENTS * len(class_names)
    assert saved["per_patient"]["n"] == PATIENTS * len(class_names)
    text = r.output + patients + (cv / "oof_series_predictions.csv").read_text()
    text += (cv / "metrics.json").read_text()
    # the folders below DATA are named after the patients (the DATA folder itself is the
    # user's own argument, echoed as given)
    leaked = [w for w in ("Doe", "Jane", "MRN") if w in text]
    assert not leaked, (leaked, text[text.find(leaked[0]) - 200 :][:400] if leaked else "")


def test_cv_console_prints_unit_levels_and_what_was_undefined_on_which_fold(monkeypatch, tmp_path):
    """The cv summary on screen: the pooling rule once, each level's mean ± std over folds
    with "undefined" for a fold without a unit of a class, and why it was left out."""
    from click.testing import CliRunner

    import mriscan.training.crossval as crossval
    from mriscan.cli import main
    from mriscan.metrics import THRESHOLD_RULE
    from mriscan.tasks import resolve_task
    from mriscan.training.crossval import headline, summarize_levels

    folds, levels = _two_folds()
    levels[1] = _fold_levels(0.4, [0.3, 0.1], [0, 0], ["D", "E"], ["P4", "P5"])
    task = resolve_task(("no", "yes"))
    units = summarize_levels(task, folds, levels, n_boot=20)
    for level, (section, _) in units.items():  # as cross_validate names its files
        section["predictions"] = f"oof_{level}_predictions.csv"
    keys = list(headline(task))
    s = {k: units["series"][0][k] for k in keys}  # stands in for the slice summary
    s.update(
        protocol={"folds": 2, "repeats": 1, "samples": 12, "duplicate_groups": 5,
                  "threshold_rule": THRESHOLD_RULE},
        seconds=6.0, task=task.describe(), headline=keys,
        pooled={"recall_per_data_class": {"glioma": {"n": 4, "recall": 0.5},
                                          "pituitary": {"n": 0, "recall": float("nan")}},
                "tumor_types_only": {"n": 4, "accuracy": 0.75, "rule": "most probable tumor "
                                     "class, on slices whose true class is a tumor"}},
        per_series=units["series"][0], per_patient=units["patient"][0],
    )  # fmt: skip
    monkeypatch.setattr(crossval, "cross_validate", lambda *a, **k: s)
    r = CliRunner().invoke(main, ["cv", str(tmp_path), "--out", str(tmp_path / "art")])
    assert r.exit_code == 0, r.output
    assert r.output.count("the mean of the top-3 slice P(yes)") == 1  # the rule, once
    assert f"  decision: {THRESHOLD_RULE}\n" in r.output  # and the decision rule
    assert "Per series: DICOM series, NIfTI volumes, manifest groups (5 units" in r.output
    # one defined fold: the std is undefined, not 0
    assert "sensitivity       1.000 ± undefined" in r.output
    assert "folds: 1.000 undefined" in r.output
    assert (
        "(series) repeat 1, fold 2: undefined, left out of the mean: balanced_accuracy, "
        "macro_f1, roc_auc, sensitivity, recall of 'yes', F1 of 'yes': no series or volume "
        "of class 'yes'" in r.output
    )
    assert "Per patient: patients by keyed Patient ID hash (4 units" in r.output
    assert "recall per data class (pooled): glioma 0.500 (n=4), pituitary undefined (n=0)" in (
        r.output
    )
    # its rule, as oof_predictions.csv's predicted column does not give it (tester22 LOW)
    assert (
        "tumor types only (pooled, n=4, most probable tumor class, on slices whose true class "
        "is a tumor): accuracy 0.750" in r.output
    )


def test_a_class_absent_from_folds_counts_nowhere_and_its_summary_says_how_many_folds():
    """Tester 16 findings 2 and 9 (K = 3): 'pituitary' is absent from fold 0 (but predicted
    there) and fold 1 (never predicted), present in fold 2. Its recall and F1 are undefined on
    both folds alike and left out of those folds' macro-F1; the per-class summary gives
    n_defined, and a std from one fold is undefined, not 0 (as for the headline metrics)."""
    from mriscan.metrics import multiclass_metrics
    from mriscan.tasks import resolve_task

    names = ("glioma", "notumor", "pituitary")
    task = resolve_task(names)
    folds, preds = [], []
    cases = (
        ([0, 0, 1, 1], [0, 2, 1, 1]),  # pituitary absent, predicted once
        ([0, 0, 1, 1], [0, 1, 1, 1]),  # absent, never predicted
        ([0, 1, 2, 2], [0, 1, 2, 0]),  # present
    )
    for y, pred in cases:
        y = np.array(y)
        prob = np.eye(3)[pred] * 0.7 + 0.1
        folds.append({**multiclass_metrics(y, prob, names), "threshold": None})
        preds.append((y, prob, np.arange(y.size)))
    assert folds[0]["macro_f1"] == pytest.approx((2 / 3 + 1.0) / 2)  # glioma, notumor only
    assert folds[1]["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    s = summarize_folds(folds, preds, task=task, n_boot=20)
    pit = s["per_class"]["pituitary"]
    assert pit["recall"] == {"mean": 0.5, "std": pytest.approx(float("nan"), nan_ok=True),
                             "n_defined": 1}  # fmt: skip
    assert pit["f1"]["n_defined"] == 1 and pit["f1"]["mean"] == pytest.approx(2 / 3)
    assert pit["precision"]["n_defined"] == 2  # fold 0: 0 of 1 right; fold 1: never predicted
    assert pit["precision"]["mean"] == pytest.approx(0.5)
    assert np.isnan(pit["roc_auc"]["std"]) and pit["roc_auc"]["n_defined"] == 1
    glioma = s["per_class"]["glioma"]["recall"]
    assert glioma["n_defined"] == 3 and glioma["std"] == pytest.approx(
        np.std([0.5, 0.5, 1], ddof=1)
    )
    assert s["macro_f1"]["n_defined"] == 3


class _Interrupted(BaseException):
    """Stands in for a kill during a fold (not an Exception: nothing may catch it)."""


@pytest.mark.slow
@pytest.mark.backend
def test_an_interrupted_rerun_never_leaves_the_old_summary_beside_its_new_fold_models(
    tmp_path, monkeypatch
):
    """A new CV into an --out that holds a finished one: the old summary stays while no new
    fold model has landed, is removed when the first one lands, and a run stopped after that
    leaves fold folders without any summary. The same command run again resumes and writes
    its own summary."""
    import mriscan.training.crossval as cvmod
    from mriscan.artifacts import ModelCard, RunLayout
    from tests.conftest import build_class_store

    store = build_class_store(tmp_path / "two.zarr", ["no", "yes"], n_per_class=8)
    out = tmp_path / "out"
    cv = RunLayout(out).cv
    summary = [cv.metrics, cv.predictions, cv.roc_plot, cv.confusion_plot]
    summary.append(cv.unit_predictions("series"))
    for p in [*summary, cv.fold(0, 0).model, cv.fold(0, 1).model]:  # an earlier, finished run
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"old")
    old_metrics = cv.metrics.read_bytes()

    real = cvmod.fit_and_calibrate
    calls = []

    def stop_at(n):
        def fit(*a, **k):
            calls.append(1)
            if len(calls) == n:
                raise _Interrupted
            return real(*a, **k)

        return fit

    second = CVConfig(folds=2, n_boot=20, train=fast_config(**{"fit.epochs": 2}))
    # stopped before any fold model of the new run landed: the old run is whole
    monkeypatch.setattr(cvmod, "fit_and_calibrate", stop_at(1))
    with pytest.raises(_Interrupted):
        cross_validate(store, second, out=out)
    assert cv.metrics.read_bytes() == old_metrics
    assert cv.fold(0, 0).model.read_bytes() == b"old"
    # stopped during fold 2: fold 1 holds the new model, and no summary claims anything
    calls.clear()
    monkeypatch.setattr(cvmod, "fit_and_calibrate", stop_at(2))
    with pytest.raises(_Interrupted):
        cross_validate(store, second, out=out)
    card = ModelCard.load(cv.fold(0, 0).model)
    assert card.train_config["fit"]["epochs"] == 2
    assert not any(p.exists() for p in summary), [p.name for p in summary if p.exists()]
    # the same command again finishes and writes its own summary
    monkeypatch.setattr(cvmod, "fit_and_calibrate", real)
    cross_validate(store, second, out=out)
    saved = json.loads(cv.metrics.read_text())
    assert saved["cv_config"]["train"]["fit"]["epochs"] == 2
    assert saved["fold_dirs"] == ["r0_f0", "r0_f1"]
    assert all(p.is_file() for p in summary[:4]) and not summary[4].exists()  # no series here


@pytest.mark.backend
def test_an_unfinished_fold_of_another_run_is_refused_before_any_fold_is_trained(
    tmp_path, monkeypatch
):
    """--out holds a finished fold 1 and an unfinished fold 2 (its backup) of a run with other
    settings: cv refuses up front, naming fold 2's backup and what differs, and leaves fold
    1's model and the earlier summary as they were (nothing is trained)."""
    import mriscan.training.crossval as cvmod
    from mriscan.artifacts import RunLayout, write_json
    from mriscan.errors import ResumeError
    from tests.conftest import build_class_store

    store = build_class_store(tmp_path / "two.zarr", ["no", "yes"], n_per_class=8)
    cv = RunLayout(tmp_path / "out").cv
    for p in (cv.fold(0, 0).model, cv.metrics):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"old")
    fold2 = cv.fold(0, 1)
    fold2.backup.mkdir(parents=True)
    write_json(fold2.run_marker, {"run_id": "other", "identity": {"config": {"seed": -1}}})

    def fit(*a, **k):
        raise AssertionError("a fold was trained before every fold's backup was checked")

    monkeypatch.setattr(cvmod, "fit_and_calibrate", fit)
    cfg = CVConfig(folds=2, n_boot=20, train=fast_config(**{"fit.epochs": 1}))
    with pytest.raises(ResumeError) as err:
        cross_validate(store, cfg, out=tmp_path / "out")
    msg = str(err.value)
    assert str(fold2.backup) in msg and "holds an unfinished run; it differs" in msg
    assert "seed: -1 in the backup" in msg
    assert cv.fold(0, 0).model.read_bytes() == b"old" and cv.metrics.read_bytes() == b"old"


def test_cv_calls_tumor_vs_no_tumor_by_the_most_probable_class_as_evaluate_does():
    """A K-class slice whose most probable class is the healthy one is no tumor, even where
    1 - P(healthy) >= 0.5 (slice 0: .25/.45/.30; slice 4: .3/.4/.3): cv's pooled tumor vs no
    tumor counts what evaluate counts on the same slices given as a yes/no collection (and
    what predict's is_tumor says), and its rule says so."""
    from mriscan.artifacts import ModelCard
    from mriscan.evaluate import Scoring, _score
    from mriscan.preprocess import PreprocessConfig
    from mriscan.tasks import Task, compare_classes
    from mriscan.training.crossval import _pooled

    names = ("glioma", "notumor", "pituitary")
    task = Task(names, names, np.arange(3), 1)
    prob = np.array(
        [[0.25, 0.45, 0.30], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.3, 0.4, 0.3]]
    )
    y = np.array([0, 2, 0, 1, 1])
    tvh = _pooled(task, y, prob, prob.argmax(axis=1))["tumor_vs_healthy"]
    assert tvh["confusion_matrix"] == [[2, 0], [1, 2]]  # slice 0: a missed tumor
    assert tvh["sensitivity"] == pytest.approx(2 / 3) and tvh["specificity"] == 1.0
    assert tvh["threshold"] is None and "most probable class" in tvh["rule"]
    card = ModelCard(PreprocessConfig(size=32), names, None, healthy="notumor")
    cmp = compare_classes(("no", "yes"), names, "notumor")
    y_yn = (y != 1).astype(np.int64)
    ev = _score(Scoring(cmp, card, ("no", "yes"), 20), y_yn, prob, np.arange(5), y_yn)
    for key in ("accuracy", "sensitivity", "specificity", "roc_auc", "confusion_matrix"):
        assert tvh[key] == ev[key], key


def test_cv_refuses_a_class_some_fold_could_not_train_on_and_warns_of_few_groups(caplog):
    from mriscan.errors import ConfigError
    from mriscan.splits import cv_splits
    from mriscan.tasks import Task
    from mriscan.training.crossval import check_folds

    task = Task(("a", "b", "c"), ("a", "b", "c"), np.arange(3), None)

    def folds_of(labels, folds=3):
        groups = np.arange(labels.size)  # every slice its own group
        splits = list(cv_splits(labels, groups, folds=folds, val_fraction=0.15, seed=0))
        return labels, groups, splits

    # one slice of "c": the fold that tests it trains without it
    labels, groups, splits = folds_of(np.array([0] * 20 + [1] * 20 + [2]))
    with pytest.raises(ConfigError, match=r"no slice of \['c'\] in its (training|validation)") as e:
        check_folds(labels, groups, splits, task, 3)
    assert "'c': 1" in str(e.value) and "--class-map" in str(e.value)
    assert "use `mriscan cv`" not in str(e.value)
    # enough groups for every part but fewer than folds: trained, with a warning
    labels, groups, splits = folds_of(np.array([0] * 20 + [1] * 20 + [2] * 4), folds=5)
    with caplog.at_level("WARNING", logger="mriscan.training.crossval"):
        check_folds(labels, groups, splits, task, 5)
    assert any("class 'c' has 4 split group(s) for 5 folds" in r.message for r in caplog.records)


def test_cv_refuses_folds_left_without_a_test_slice_before_training():
    """3 groups per class over 5 folds: each group kept whole and spread class by class, whole
    folds get no group. cv trained the earlier folds and then failed on an assertion
    (tester29 HIGH); the check before any training refuses it, naming the way out."""
    from mriscan.errors import ConfigError
    from mriscan.splits import cv_splits
    from mriscan.tasks import Task
    from mriscan.training.crossval import check_folds

    task = Task(("no", "yes"), ("no", "yes"), np.arange(2), None)
    labels, groups = np.array([0, 0, 0, 1, 1, 1]), np.arange(6)
    splits = list(cv_splits(labels, groups, folds=5, val_fraction=0.15, seed=0))
    assert any(len(test) == 0 for *_, test in splits)  # the case itself
    with pytest.raises(ConfigError, match=r"would have an empty test part: the 6 split groups"):
        check_folds(labels, groups, splits, task, 5)
