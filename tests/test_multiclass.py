"""K = 2, 3, 4 classes through every command on small synthetic class folders."""

from __future__ import annotations

import csv
import json

import pytest
from click.testing import CliRunner

from mriscan.cli import _threshold_text, main
from mriscan.metrics import ARGMAX_RULE, THRESHOLD_RULE_TEXT
from tests.conftest import write_class_folders

FAST = ["--epochs", "2", "--pretrain", "0", "--image-size", "32", "--batch-size", "16"]
NAMES = {
    2: ("no", "yes"),
    3: ("notumor", "glioma", "pituitary"),
    4: ("notumor", "glioma", "meningioma", "pituitary"),
}


@pytest.mark.parametrize("k", [2, 3, 4])
def test_every_command_works_for_k_classes(k, tmp_path):
    names = NAMES[k]
    data = write_class_folders(tmp_path / "data", names, n_per_class=10)
    run = CliRunner()
    out = tmp_path / "run"
    args = ["--store", str(tmp_path / "s.zarr"), "--out", str(out), "--val-fraction", "0.3"]
    r = run.invoke(main, ["train", str(data), *args, "--test-fraction", "0.3", *FAST])
    assert r.exit_code == 0, r.output
    card = json.loads((out / "models" / "best_model.json").read_text())
    expected = tuple(sorted(names)) if k > 2 else ("no", "yes")
    assert tuple(card["class_names"]) == expected
    assert (card["threshold"] is None) == (k > 2) and card["healthy"] in ("notumor", "no")
    test = json.loads((out / "metrics.json").read_text())["test"]
    assert len(test["confusion_matrix"]) == k and "macro_f1" in test
    model = out / "models" / "best_model.keras"
    r = run.invoke(main, ["predict", str(model), str(data), "--output", str(tmp_path / "p.csv")])
    assert r.exit_code == 0, r.output
    said = (  # the label rule, with the threshold and how it was chosen
        f"label: yes at P ≥ {_threshold_text(card['threshold'])} ({THRESHOLD_RULE_TEXT['platt']})"
        if k == 2
        else "label: the most probable class"
    )
    assert said in r.output, r.output
    with open(tmp_path / "p.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 10 * k and {f"p_{n}" for n in names} <= set(rows[0])
    assert {r["label"] for r in rows} <= set(names)
    if k > 2:  # the tumor vs no tumor columns follow the row: 1 - P(healthy), and the label
        for row in rows:
            assert float(row["tumor_probability"]) == pytest.approx(
                1 - float(row["p_notumor"]), abs=2e-6
            )
            assert row["is_tumor"] == ("no" if row["label"] == "notumor" else "yes")
    r = run.invoke(main, ["evaluate", str(data), "--model", str(model), "--out",
                          str(tmp_path / "ev"), "--keep-duplicates"])  # fmt: skip
    assert r.exit_code in (0, 1), r.output  # 1 only when a metric is undefined on these data
    ev = json.loads((tmp_path / "ev" / "evaluation" / "metrics.json").read_text())
    assert ev["n"] == 10 * k and len(ev["confusion_matrix"]) == k
    if k > 2:  # a K-class model on a yes/no collection: tumor vs no tumor, exit 0
        yn = write_class_folders(tmp_path / "yn", ("no", "yes"), n_per_class=6, seed=3)
        r = run.invoke(main, ["evaluate", str(yn), "--model", str(model), "--out",
                              str(tmp_path / "ev_yn"), "--keep-duplicates"])  # fmt: skip
        assert r.exit_code == 0 and "tumor_vs_healthy" in r.output, r.output
    one = next((data / names[-1]).iterdir())
    r = run.invoke(main, ["explain", str(model), str(one), "--out", str(tmp_path / "x"),
                          "--class", names[-1]])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert list((tmp_path / "x").glob(f"*_{names[-1]}_layercam.png"))


@pytest.mark.slow
def test_four_class_cv_and_a_yes_no_map(tmp_path):
    names = NAMES[4]
    data = write_class_folders(tmp_path / "data", names, n_per_class=12)
    run = CliRunner()
    args = ["--store", str(tmp_path / "s.zarr"), "--out", str(tmp_path / "cv4"), "--folds", "3"]
    r = run.invoke(main, ["cv", str(data), *args, "--val-fraction", "0.3", *FAST])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "cv4" / "cv" / "metrics.json").read_text())
    assert m["headline"] == ["accuracy", "balanced_accuracy", "macro_f1", "macro_roc_auc"]
    assert "tumor_vs_healthy" in m["pooled"] and "tumor_types_only" in m["pooled"]
    cmap = "yes=glioma,meningioma,pituitary;no=notumor"
    r = run.invoke(main, ["train", str(tmp_path / "s.zarr"), "--out", str(tmp_path / "yn"),
                          "--class-map", cmap, "--val-fraction", "0.3", *FAST])  # fmt: skip
    assert r.exit_code == 0, r.output
    card = json.loads((tmp_path / "yn" / "models" / "best_model.json").read_text())
    assert card["class_names"] == ["no", "yes"]


def test_an_empty_extra_class_folder_is_refused_with_the_way_out(tmp_path):
    """An empty class folder stops ingest with one line naming it and the fix (no traceback);
    a class whose files were all unreadable is stored without slices, and train and cv then
    refuse it before any training instead of fitting a K-class model that never saw it."""
    data = write_class_folders(tmp_path / "data", ("no", "yes"), n_per_class=6)
    (data / "glioma").mkdir()
    store = tmp_path / "s.zarr"
    run = CliRunner()
    r = run.invoke(main, ["ingest", str(data), "--store", str(store), "--image-size", "32"])
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit)  # one line, no traceback
    assert f"Class folder(s) ['glioma'] under {data} hold no JPEG/PNG" in r.output
    assert "move the folder out of" in r.output and "Traceback" not in r.output
    assert not store.exists()
    (data / "glioma" / "cut.png").write_bytes((data / "yes" / "0.png").read_bytes()[:60])
    r = run.invoke(main, ["ingest", str(data), "--store", str(store), "--image-size", "32"])
    assert r.exit_code == 0 and "glioma/cut.png" in r.output, r.output
    for cmd in (["train"], ["cv", "--folds", "2"]):
        r = run.invoke(main, [*cmd, str(store), "--out", str(tmp_path / "o"), *FAST])
        assert r.exit_code == 1, r.output
        assert "Class(es) ['glioma'] have no usable slice" in r.output
        assert "--class-map" in r.output and not (tmp_path / "o" / "models").exists()


def test_a_class_of_label_conflicts_is_said_so_with_a_map_built_from_the_task(tmp_path, caplog):
    """A folder of byte copies of another class: every copy is a label conflict, none is
    stored. train names the conflicts (not only 'unreadable or deleted'), suggests a map of the
    task's own classes, and logs the classes a map leaves out, before any training."""
    import logging
    import shutil

    data = write_class_folders(tmp_path / "data", ("notumor", "glioma", "meningioma"), 6)
    (data / "zdupes").mkdir()
    for i in range(3):
        shutil.copy(data / "notumor" / f"{i}.png", data / "zdupes" / f"c{i}.png")
    args = ["--store", str(tmp_path / "s.zarr"), "--out", str(tmp_path / "o"), *FAST]
    with caplog.at_level(logging.INFO):
        r = CliRunner().invoke(main, ["train", str(data), *args])
    assert r.exit_code == 1, r.output
    assert "Class(es) ['zdupes'] have no usable slice" in r.output
    assert "label conflict" in r.output and "deleted since" not in r.output
    assert "--class-map 'glioma=glioma;meningioma=meningioma;notumor=notumor'" in r.output
    assert "zdupes: 3 label conflict(s)" in caplog.text
    caplog.clear()
    cmap = "glioma=glioma;notumor=notumor;zdupes=zdupes"  # still names the empty class
    with caplog.at_level(logging.INFO):
        r = CliRunner().invoke(main, ["cv", str(tmp_path / "s.zarr"), "--class-map", cmap, *args])
    assert r.exit_code == 1 and "['zdupes'] have no usable slice" in r.output, r.output
    assert "--class-map 'glioma=glioma;notumor=notumor'" in r.output
    assert "task: glioma; notumor (healthy); zdupes; left out: meningioma" in caplog.text
    assert not (tmp_path / "o" / "models").exists()


def test_an_empty_folder_a_class_map_leaves_out_is_listed_not_refused(tmp_path):
    """The class map leaves the empty folder out explicitly, so train and cv ingest the rest
    (the data may be read-only) and the ingest report lists the folder as not read."""
    from mriscan.config import TaskConfig, parse_class_map
    from mriscan.errors import EmptyDatasetError
    from mriscan.ingest import IngestConfig, ingest
    from mriscan.preprocess import PreprocessConfig
    from mriscan.sources import open_or_ingest
    from mriscan.tasks import resolve_task

    data = write_class_folders(tmp_path / "data", ("notumor", "glioma", "single"), 4)
    (data / "empty").mkdir()
    cfg = TaskConfig(class_map=parse_class_map("glioma=glioma;notumor=notumor;single=single"))
    seen = []
    with open_or_ingest(
        data,
        store_path=tmp_path / "s.zarr",
        image_size=32,
        check_classes=lambda names: seen.append(resolve_task(names, cfg)),
        used_classes=cfg.used_classes,
    ) as store:
        assert tuple(store.class_names) == ("glioma", "notumor", "single") and len(store) == 12
    assert seen[0].left_out == ()
    pre = IngestConfig(preprocess=PreprocessConfig(size=32), used_classes=cfg.used_classes)
    report = ingest(data, tmp_path / "t.zarr", pre)
    assert ("empty", "an empty class folder the class map leaves out") in report.ignored
    for used in (None, ("glioma", "notumor", "empty")):  # no map, or a map naming it
        with pytest.raises(EmptyDatasetError, match=r"\['empty'\]"):
            open_or_ingest(data, store_path=tmp_path / "u.zarr", used_classes=used)
    assert not (tmp_path / "u.zarr").exists()


def _train_and_warnings(store, changes: dict, out, caplog) -> tuple[list[str], dict]:
    """Train ``fast_config(**changes)`` on ``store`` into ``out``: the WARNING messages the
    run logged, and its model card."""
    import logging

    from mriscan.training.workflow import train
    from tests.conftest import fast_config

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        train(store, fast_config(**changes), out=out)
    card = json.loads((out / "models" / "best_model.json").read_text())
    return [r.getMessage() for r in caplog.records], card


def test_a_train_run_says_a_task_warning_once(tmp_path, caplog):
    """The "names say the opposite" warning of a task is logged once per train run (it was
    logged by every resolution of the task: the class check, the run, fitting, calibrating
    and the model card)."""
    from tests.conftest import build_class_store

    store = build_class_store(tmp_path / "s.zarr", ("glioma", "meningioma", "notumor"), 16)
    changes = {
        "fit.epochs": 1,
        "task.class_map": (("yes", ("glioma",)), ("no", ("notumor",))),
        "task.positive": "no",
    }
    warnings, card = _train_and_warnings(store, changes, tmp_path / "run", caplog)
    said = [m for m in warnings if "say the opposite" in m]
    assert len(said) == 1, warnings
    assert "the positive (tumor) class is 'no'" in said[0]
    assert card["class_names"] == ["yes", "no"]  # the choice stands: --positive no


def test_a_threshold_rule_a_k_class_task_cannot_use_is_said_once(tmp_path, caplog):
    """--threshold-rule sets a two-class model's threshold; asked of a 3-class task, the run
    goes on (the rule never changes the weights) and says once that the rule is not used."""
    from tests.conftest import build_class_store

    store = build_class_store(tmp_path / "s.zarr", ("glioma", "meningioma", "notumor"), 16)
    changes = {"fit.epochs": 1, "fit.threshold_rule": "youden"}
    warnings, card = _train_and_warnings(store, changes, tmp_path / "run", caplog)
    said = [m for m in warnings if "--threshold-rule youden is not used" in m]
    assert len(said) == 1, warnings
    assert "this task has 3 classes" in said[0]
    assert card["threshold"] is None and card["threshold_rule"] == ARGMAX_RULE
    warnings, _ = _train_and_warnings(store, {"fit.epochs": 1}, tmp_path / "run2", caplog)
    assert not [m for m in warnings if "is not used" in m]  # the default rule says nothing


def test_a_k_class_run_removes_the_roc_plot_an_earlier_two_class_run_left(tmp_path):
    """train and evaluate into an --out that holds a two-class run's roc.png: a K-class model
    has no ROC curve, so the old plot is removed instead of standing beside the new results
    (as cv does)."""
    names = NAMES[3]
    data = write_class_folders(tmp_path / "data", names, n_per_class=10)
    run = CliRunner()
    out = tmp_path / "run"
    args = [str(data), "--store", str(tmp_path / "s.zarr"), "--out", str(out),
            "--val-fraction", "0.3", "--test-fraction", "0.3", *FAST, "--epochs", "1"]  # fmt: skip
    roc = out / "plots" / "roc.png"
    roc.parent.mkdir(parents=True)
    roc.write_bytes(b"an earlier yes/no model's ROC")
    r = run.invoke(main, ["train", *args])
    assert r.exit_code == 0, r.output
    assert not roc.exists() and (out / "plots" / "confusion_matrix.png").is_file()
    assert (out / "plots" / "training_history.png").is_file()
    model = out / "models" / "best_model.keras"
    yn = write_class_folders(tmp_path / "yn", ("no", "yes"), n_per_class=6, seed=3)
    ev = tmp_path / "ev"
    for folder in (yn, data):  # tumor vs no tumor (a ROC curve), then the 3 classes (none)
        r = run.invoke(main, ["evaluate", str(folder), "--model", str(model), "--out",
                              str(ev), "--keep-duplicates"])  # fmt: skip
        assert r.exit_code in (0, 1), r.output  # 1 only when a metric is undefined
        assert (ev / "evaluation" / "roc.png").is_file() == (folder == yn)
    assert (ev / "evaluation" / "confusion_matrix.png").is_file()
