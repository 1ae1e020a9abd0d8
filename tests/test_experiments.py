"""The experiment registry (experiments/accuracy_experiments.py) and threshold_rules' reader.

No experiment is run: these check that every name builds a valid, complete config that does not
depend on today's defaults, and that old rows keep the settings they measured.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from _experiments import load_experiment

from mriscan.config import CVConfig, override
from mriscan.errors import MriscanError
from mriscan.preprocess import PreprocessConfig

ax = load_experiment("accuracy_experiments")
DEFAULT_FILTERS = CVConfig().train.model.filters


@pytest.mark.parametrize("name", sorted(ax.EXPERIMENTS))
def test_every_entry_resolves_to_a_valid_complete_config(name):
    res = ax.resolve(name)
    assert isinstance(res.cv, CVConfig)
    assert isinstance(res.preprocess, PreprocessConfig)
    assert res.cv.train.image_size == res.preprocess.size
    # the record round-trips as JSON and names the row
    d = json.loads(json.dumps(res.to_dict()))
    assert d["config"] == res.cv.to_dict() and d["row"] == res.experiment.row


@pytest.mark.parametrize("era", sorted(ax.ERAS))
def test_every_era_spells_out_every_setting(era):
    assert set(ax.ERAS[era]) == ax.all_keys()


def test_reference_pins_todays_defaults():
    """Fails when a default changes: add an era for the new defaults, keep old rows pinned."""
    res = ax.resolve("reference")
    expected = override(CVConfig(), {"train.image_size": 48, "train.runtime.verbose": "silent"})
    assert res.cv == expected
    assert res.preprocess == PreprocessConfig()
    # and the chain of eras arrives at it (the rows pin float32, what their CPU ran)
    assert ax._derive(ax.S14_PLATT, {"hardware.precision": "auto"}) == ax.REFERENCE


@pytest.mark.parametrize(
    ("name", "filters"),
    [
        ("s64_e60", (16, 32, 64, 128)),
        ("mirror", (16, 32, 64, 128)),
        ("pretrain", (16, 32, 64, 128)),
        ("e45", (16, 32, 64, 128)),
        ("seed1_e45", (16, 32, 64, 128)),
        ("s160_e45", (16, 32, 64, 128)),
        ("wide", (32, 64, 128, 256)),
        ("w24_e45", (24, 48, 96, 192)),
        ("seed2", (24, 48, 96, 192)),
        ("val25", (24, 48, 96, 192)),
    ],
)
def test_rows_keep_the_filters_they_ran_with(name, filters):
    assert ax.resolve(name).cv.train.model.filters == filters


def test_rows_before_the_wider_default_differ_from_it():
    old = [n for n, e in ax.EXPERIMENTS.items() if e.row is not None and e.row < 28]
    assert len(old) >= 20
    for name in old:
        assert ax.resolve(name).cv.train.model.filters != DEFAULT_FILTERS, name


@pytest.mark.parametrize(
    ("name", "setting", "value"),
    [
        ("s64_e60", "fit.patience", 15),  # row 3: early stopping
        ("s64_e60", "fit.select", "best"),
        ("s96_e60_last_tta", "model.bn_momentum", 0.99),  # row 6: Keras's momentum
        ("bn09", "model.bn_momentum", 0.9),
        ("fill_nearest", "model.mirror", False),  # row 8: before the mirror channel
        ("mirror_b16", "hardware.strategy", "mirrored"),  # row 11: before row 13
        ("s96", "pretrain.phantoms", 0),  # row 13: before pre-training
        ("ema", "fit.epochs", 60),  # row 18: 60 epochs until row 23
        ("seed1", "fit.epochs", 60),  # row 25: the 60-epoch recipe on seed 1
        ("val25", "split.val_fraction", 0.25),
    ],
)
def test_rows_keep_other_settings_they_measured(name, setting, value):
    cfg = ax.resolve(name).cv.train
    obj = cfg
    for part in setting.split("."):
        obj = getattr(obj, part)
    assert obj == value


def test_alignment_follows_the_row():
    assert ax.resolve("ema").preprocess.align is False  # row 18, before row 19
    assert ax.resolve("align").preprocess.align is True
    assert ax.resolve("s160_e45").preprocess.size == 160


def test_retired_and_unknown_names_are_refused():
    with pytest.raises(MriscanError, match="retired"):
        ax.resolve("default")
    with pytest.raises(MriscanError, match="unknown experiment"):
        ax.resolve("no_such_row")


def test_an_incomplete_era_is_refused(monkeypatch):
    era = dict(ax.S7_W24)
    del era["fit.epochs"]
    monkeypatch.setitem(ax.ERAS, "broken", era)
    monkeypatch.setitem(ax.EXPERIMENTS, "broken_row", ax.Experiment("broken", row=99))
    with pytest.raises(MriscanError, match=r"missing \['fit.epochs'\]"):
        ax.resolve("broken_row")


def test_a_change_naming_no_setting_is_refused(monkeypatch):
    monkeypatch.setitem(ax.EXPERIMENTS, "typo", ax.Experiment("reference", {"fit.epoch": 3}))
    with pytest.raises(MriscanError, match="unknown settings"):
        ax.resolve("typo")


def test_dry_run_prints_each_resolved_config(capsys):
    assert ax.main(["--dry-run", "seed1_e45", "reference"]) == 0
    text = capsys.readouterr().out
    records = [json.loads(chunk) for chunk in text.replace("}\n{", "}\x00{").split("\x00")]
    assert [r["name"] for r in records] == ["seed1_e45", "reference"]
    assert records[0]["config"]["train"]["model"]["filters"] == [16, 32, 64, 128]
    assert records[0]["config"]["train"]["seed"] == 1


def test_git_state_names_the_commit():
    state = ax.git_state()
    assert len(state["commit"]) == 40 and isinstance(state["dirty"], bool)


def test_threshold_rules_read_the_protocol_numbers(tmp_path):
    tr = load_experiment("threshold_rules")
    protocol = {"kind": "cv", "seed": 2, "folds": 5, "repeats": 1, "val_fraction": 0.25}
    (tmp_path / "metrics.json").write_text(json.dumps({"protocol": protocol}))
    assert tr.run_protocol(tmp_path) == (2, 5, 0.25)
    (tmp_path / "metrics.json").write_text(json.dumps({"protocol": {**protocol, "repeats": 2}}))
    with pytest.raises(MriscanError, match="one-repeat"):
        tr.run_protocol(tmp_path)
    (tmp_path / "metrics.json").write_text(json.dumps({"protocol": {"kind": "cv", "seed": 0}}))
    with pytest.raises(MriscanError, match="folds"):
        tr.run_protocol(tmp_path)


def test_run_records_config_commit_and_appends_one_json_line(tmp_path, monkeypatch):
    """The plumbing of a run, with cross_validate replaced by a stand-in (no training)."""
    import mriscan.training.crossval as crossval

    seen = {}

    def fake_cv(store, cfg, *, out):
        seen.update(store=store, cfg=cfg, out=out)
        fold = {"mean": 0.8, "std": 0.1, "ci95": [0.7, 0.9], "per_fold": [0.8] * 5}
        return {
            **{k: fold for k in crossval.HEADLINE},
            "headline": list(crossval.HEADLINE),
            "pooled": {"roc_auc": 0.85},
            "hardware": "cpu, float32",
        }

    monkeypatch.setattr(crossval, "cross_validate", fake_cv)
    monkeypatch.setattr(ax, "store_for", lambda data, pre, stores: tmp_path / "s.zarr")
    log_path = tmp_path / "log.jsonl"
    res = ax.resolve("seed1_e45")
    for _ in range(2):
        rec = ax.run(res, tmp_path / "data", tmp_path / "runs", log_path, tmp_path / "stores")
    assert seen["cfg"] == res.cv and seen["store"] == tmp_path / "s.zarr"
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert len(lines) == 2
    assert lines[-1]["config"] == res.cv.to_dict()
    assert lines[-1]["config"]["train"]["model"]["filters"] == [16, 32, 64, 128]
    assert lines[-1]["commit"] == ax.git_state()["commit"] and "dirty" in lines[-1]
    assert lines[-1]["row"] == 26 and lines[-1]["roc_auc"]["mean"] == 0.8
    on_disk = json.loads((Path(rec["out"]) / "experiment.json").read_text())
    assert on_disk == lines[-1]


def test_a_k_class_run_records_its_own_headline_and_pooled_numbers(tmp_path, monkeypatch):
    """A 4-class CV has no "roc_auc": the record takes the summary's headline (accuracy,
    balanced accuracy, macro-F1, macro AUC) and its pooled section (tumor types only)."""
    import mriscan.training.crossval as crossval

    headline = list(crossval.HEADLINE_MULTI)
    fold = {"mean": 0.9, "std": 0.05, "ci95": [0.85, 0.95], "per_fold": [0.9] * 5, "n": 5}
    pooled = {"macro_roc_auc": 0.98, "tumor_types_only": {"n": 30, "accuracy": 0.88}}
    summary = {**{k: fold for k in headline}, "headline": headline, "pooled": pooled}
    monkeypatch.setattr(crossval, "cross_validate", lambda store, cfg, *, out: {
        **summary, "hardware": "cpu, float32"})  # fmt: skip
    monkeypatch.setattr(ax, "store_for", lambda data, pre, stores: tmp_path / "s.zarr")
    rec = ax.run(ax.resolve("fig4_c2"), tmp_path / "d", tmp_path / "r", tmp_path / "l.jsonl",
                 tmp_path / "st")  # fmt: skip
    assert rec["macro_f1"]["mean"] == 0.9 and "roc_auc" not in rec
    assert rec["pooled_auc"] == 0.98 and rec["pooled"]["tumor_types_only"]["accuracy"] == 0.88
    assert rec["config"]["train"]["model"]["convs_per_block"] == 2


def test_cross_collection_run_trains_on_one_set_scores_the_other_and_logs(tmp_path, monkeypatch):
    """The plumbing of experiments/cross_collection.py with train/evaluate as stand-ins."""
    import mriscan.evaluate as evaluate_mod
    import mriscan.training.workflow as workflow

    xc = load_experiment("cross_collection")
    seen = {}

    trained = SimpleNamespace(
        model_path=tmp_path / "m.keras", metrics={"roc_auc": 0.99, "balanced_accuracy": 0.95}
    )

    def fake_train(store, cfg, *, out):
        seen.update(train_store=store, cfg=cfg)
        return trained

    def fake_evaluate(model, data, *, out):
        seen.update(model=model, eval_store=data)
        return {
            "roc_auc": 0.8,
            "balanced_accuracy": 0.7,
            "accuracy": 0.75,
            "sensitivity": 0.6,
            "specificity": None,  # undefined stays undefined in the record
            "ci95": {"roc_auc": [0.7, 0.9]},
            "threshold": 0.4,
            "recall_per_data_class": {"pituitary": {"n": 3, "recall": 1 / 3}},
            "near_duplicates_removed": {"count": 5},
        }

    monkeypatch.setattr(workflow, "train", fake_train)
    monkeypatch.setattr(evaluate_mod, "evaluate", fake_evaluate)
    monkeypatch.setattr(xc, "store_for", lambda data, pre, stores: tmp_path / f"{data.name}.zarr")
    log_path = tmp_path / "log.jsonl"
    rec = xc.run(
        "xc_noalign", tmp_path / "a", tmp_path / "b", tmp_path / "runs", log_path, tmp_path
    )
    res = ax.resolve("xc_noalign")
    assert seen["cfg"] == res.cv.train and seen["train_store"] == tmp_path / "a.zarr"
    assert seen["eval_store"] == tmp_path / "b.zarr" and seen["model"] == trained.model_path
    line = json.loads(log_path.read_text())
    assert line["preprocess"]["align"] is False and line["kind"] == "cross_collection"
    assert line["cross"]["roc_auc"] == 0.8 and line["cross"]["specificity"] is None
    assert line["cross"]["near_duplicates_removed"] == 5
    assert line["own_test"]["roc_auc"] == 0.99 and line["commit"] == ax.git_state()["commit"]
    assert json.loads((Path(rec["out"]) / "experiment.json").read_text()) == line


def test_the_summary_line_prints_a_k_class_record_without_roc_auc():
    """A 4-class CV record has macro-F1 and macro ROC AUC, no ROC AUC: its line printed after
    the run crashed the harness with KeyError 'roc_auc' (sixteenth session), after the record
    was written."""
    stat = {"mean": 0.9, "std": 0.01}
    k_class = {"accuracy": stat, "macro_f1": stat, "macro_roc_auc": stat, "minutes": 74.2}
    assert ax.summary_line(k_class) == (
        "  accuracy 0.900 ± 0.010, macro-F1 0.900 ± 0.010, macro ROC AUC 0.900 ± 0.010, 74.2 min"
    )
    binary = {"accuracy": stat, "roc_auc": stat, "minutes": 9.0}
    assert ax.summary_line(binary) == "  accuracy 0.900 ± 0.010, ROC AUC 0.900 ± 0.010, 9.0 min"
