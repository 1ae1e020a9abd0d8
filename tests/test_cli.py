"""The CLI through click's CliRunner: help, ingest/verify/info, errors as one clear line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from _shards import write_chunk_bytes
from click.testing import CliRunner

from mriscan.cli import main
from mriscan.metrics import THRESHOLD_RULE_TEXT


def test_an_interrupted_ingest_says_so_and_leaves_the_store_as_committed(
    class_folder, tmp_path, monkeypatch
):
    """Ctrl-C used to print click's bare "Aborted!" and leave write.pending and rows past the
    committed end for the next writer to trim."""
    import numpy as np
    from PIL import Image

    from mriscan.store import ImageStore, verify_store

    store = tmp_path / "s.zarr"
    args = ["ingest", str(class_folder), "--store", str(store), "--image-size", "32"]
    assert CliRunner().invoke(main, args).exit_code == 0
    for i in range(3):
        Image.fromarray(np.full((40, 40), 40 * i + 20, np.uint8)).save(
            class_folder / "no" / f"n{i}.png"
        )
    real = ImageStore.append

    def append_then_interrupt(self, *a, **k):
        real(self, *a, **k)  # rows past the committed end, write.pending written
        assert (store / "write.pending").exists()
        raise KeyboardInterrupt

    monkeypatch.setattr(ImageStore, "append", append_then_interrupt)
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 130 and "Aborted!" not in r.output
    assert "Interrupted: nothing of this run was committed" in r.output
    assert "holds what its last commit held" in r.output
    monkeypatch.undo()
    assert not (store / "write.pending").exists()
    with ImageStore.open(store) as st:
        assert len(st) == 12
    assert verify_store(store) == []


def test_ctrl_c_in_any_command_is_one_line_and_exit_130(class_folder, tmp_path, monkeypatch):
    import mriscan.store

    store = tmp_path / "s.zarr"
    args = ["ingest", str(class_folder), "--store", str(store), "--image-size", "32"]
    assert CliRunner().invoke(main, args).exit_code == 0

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(mriscan.store, "verify_store", interrupted)
    r = CliRunner().invoke(main, ["verify", "--store", str(store)])
    assert r.exit_code == 130 and "Aborted!" not in r.output
    assert "Interrupted (Ctrl-C)" in r.output


@pytest.mark.parametrize("fmt", ["images", "dicom"])
def test_synth_refuses_a_folder_that_is_not_empty(tmp_path, fmt):
    """Writing a second set into the first overwrote part of it and kept the rest, mixed."""
    out = tmp_path / "set"
    (out / "yes").mkdir(parents=True)
    (out / "yes" / "old.png").write_bytes(b"x")
    r = CliRunner().invoke(main, ["synth", str(out), "--format", fmt, "--count", "4"])
    assert r.exit_code == 2 and "is not an empty folder" in r.output
    assert sorted(p.name for p in out.rglob("*")) == ["old.png", "yes"]
    empty = tmp_path / "empty"
    empty.mkdir()
    r = CliRunner().invoke(main, ["synth", str(empty), "--format", fmt, "--count", "4",
                                  "--patients", "2", "--slices", "2"])  # fmt: skip
    assert r.exit_code == 0, r.output


def test_an_empty_modality_is_refused_in_the_cli_s_words(class_folder, tmp_path):
    r = CliRunner().invoke(main, ["ingest", str(class_folder), "--store", str(tmp_path / "s"),
                                  "--modality", ""])  # fmt: skip
    assert r.exit_code == 2 and "'--modality': an empty value" in r.output
    assert "tuple" not in r.output and "None" not in r.output


@pytest.mark.parametrize("flags, shown", [([], False), (["-v"], True)])
def test_pydicom_s_own_log_lines_show_from_v_on(tmp_path, caplog, flags, shown):
    """pydicom's logged warnings name no file and may quote a header value (a birth date):
    hidden by default, shown with -v, even though pydicom sets its logger's level when it is
    imported (after the CLI's set-up)."""
    import logging

    r = CliRunner().invoke(main, [*flags, "info", "--store", str(tmp_path / "none")])
    assert r.exit_code != 0  # no store: the logging set-up ran all the same
    logging.getLogger("pydicom").setLevel(logging.WARNING)  # what pydicom's import does
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("pydicom").warning("Invalid value for VR DA: '19500110'")
        logging.getLogger("pydicom").error("a pydicom error")
    got = [r.getMessage() for r in caplog.records if r.name == "pydicom"]
    CliRunner().invoke(main, ["-v", "info", "--store", str(tmp_path / "none")])  # filter off
    assert ("Invalid value for VR DA: '19500110'" in got) is shown and "a pydicom error" in got


def test_help_lists_commands_and_imports_no_tensorflow():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for cmd in ("ingest", "verify", "info"):
        assert cmd in result.output
    code = "import sys, mriscan.cli; print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    assert out.strip() == "False False"


def test_cli_start_up_imports_neither_the_store_nor_ingest():
    """Options come from light config modules (mriscan.ingest_config, mriscan.paths): zarr and
    the ingest machinery load only in the commands that use them (~0.3 s of every start-up)."""
    code = (
        "import sys, mriscan.cli; "
        "print(sorted(m for m in ('zarr', 'mriscan.store', 'mriscan.ingest', 'pydicom', "
        "'nibabel', 'highdicom') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
    from mriscan.ingest import IngestConfig
    from mriscan.ingest_config import IngestConfig as Light
    from mriscan.sources import DEFAULT_STORE, PHANTOM_STORE
    from mriscan.store import DEFAULT_STORE as STORE_DEFAULT

    assert IngestConfig is Light and DEFAULT_STORE is STORE_DEFAULT
    assert str(PHANTOM_STORE) == "data/processed/synthetic.zarr"


def test_ingest_verify_info(class_folder, tmp_path):
    store = tmp_path / "s.zarr"
    runner = CliRunner()
    r = runner.invoke(
        main, ["ingest", str(class_folder), "--store", str(store), "--image-size", "32"]
    )
    assert r.exit_code == 0, r.output
    assert "added 12 slice(s) (no: 6, yes: 6); 12 slice(s) in total" in r.output
    r = runner.invoke(
        main, ["ingest", str(class_folder), "--store", str(store), "--image-size", "32"]
    )
    assert "added 0" in r.output
    r = runner.invoke(main, ["verify", "--store", str(store)])
    assert r.exit_code == 0 and r.output.startswith("OK")
    r = runner.invoke(main, ["info", "--store", str(store)])
    assert r.exit_code == 0 and "Samples:    12 (no: 6, yes: 6)" in r.output
    assert "Codec:      sharding, inner chunks 1×32×32: uncompressed" in r.output
    # the store was aligned (the default): adding with --no-align is refused, not mixed in
    r = runner.invoke(
        main, ["ingest", str(class_folder), "--store", str(store), "--image-size", "32",
               "--no-align"],
    )  # fmt: skip
    assert r.exit_code != 0 and "align True (asked: False)" in r.output
    unaligned = tmp_path / "u.zarr"
    r = runner.invoke(
        main, ["ingest", str(class_folder), "--store", str(unaligned), "--image-size", "32",
               "--no-align"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    index = json.loads((unaligned / "index.json").read_text())
    assert index["config"]["align"] is False
    # the alignment method is recorded; the full search stays selectable for older stores
    assert json.loads((store / "index.json").read_text())["config"]["align_method"] == "fast"
    searched = tmp_path / "search.zarr"
    r = runner.invoke(
        main, ["ingest", str(class_folder), "--store", str(searched), "--image-size", "32",
               "--align-method", "search"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert json.loads((searched / "index.json").read_text())["config"]["align_method"] == "search"


def test_verify_fails_on_corruption_and_errors_are_one_line(class_folder, tmp_path):
    store = tmp_path / "s.zarr"
    runner = CliRunner()
    runner.invoke(main, ["ingest", str(class_folder), "--store", str(store), "--image-size", "32"])
    write_chunk_bytes(store, 2, b"garbage")
    r = runner.invoke(main, ["verify", "--store", str(store)])
    assert r.exit_code == 1 and "sample 2" in r.output
    r = runner.invoke(main, ["info", "--store", str(tmp_path / "nope.zarr")])
    assert r.exit_code == 1 and "No mriscan store" in r.output and "Traceback" not in r.output


def test_synth_train_predict_explain_evaluate(tmp_path):
    """The whole CLI path on tiny phantoms: every command answers and writes its files."""
    runner = CliRunner()
    raw = tmp_path / "raw"
    r = runner.invoke(main, ["synth", str(raw), "--count", "40", "--size-range", "150", "220"])
    assert r.exit_code == 0, r.output
    assert "Wrote 24 yes/ and 16 no/" in r.output
    out = tmp_path / "art"
    r = runner.invoke(
        main,
        [
            "train",
            str(raw),
            "--store",
            str(tmp_path / "s.zarr"),
            "--epochs",
            "1",
            "--image-size",
            "32",
            "--out",
            str(out),
            "--verbose-fit",
            "silent",
            "--pretrain",
            "0",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "accuracy" in r.output and "ROC AUC" in r.output and "strategy " in r.output
    model = out / "models" / "best_model.keras"
    assert model.is_file()
    preds = tmp_path / "p.csv"
    r = runner.invoke(main, ["predict", str(model), str(raw / "yes"), "--output", str(preds)])
    assert r.exit_code == 0 and "Predicted 24 image(s)" in r.output and preds.is_file()
    r = runner.invoke(
        main,
        [
            "explain",
            str(model),
            str(raw / "yes" / "syn_000000.jpg"),
            "--out",
            str(tmp_path / "cam"),
        ],
    )
    assert r.exit_code == 0, r.output
    assert (tmp_path / "cam" / "syn_000000_layercam.png").is_file()
    cam = [
        "explain",
        str(model),
        str(raw / "yes" / "syn_000000.jpg"),
        "--out",
        str(tmp_path / "cam"),
    ]
    r = runner.invoke(main, [*cam, "--method", "gradcam"])  # a second map beside the first
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "cam").glob("*.png")) == [
        "syn_000000_gradcam.png",
        "syn_000000_layercam.png",
    ]
    r = runner.invoke(main, [*cam, "--method", "saliency"])
    assert r.exit_code == 2 and "saliency" in r.output
    r = runner.invoke(main, ["evaluate", "--model", str(model), "--split", "test"])
    assert r.exit_code == 0, r.output
    assert (out / "evaluation" / "metrics.json").is_file()


def test_train_reports_bad_options_in_one_line(tmp_path, class_folder):
    r = CliRunner().invoke(
        main, ["train", str(class_folder), "--epochs", "0", "--store", str(tmp_path / "s.zarr")]
    )
    assert r.exit_code == 2 and "epochs must be a positive integer" in r.output
    assert "Invalid value for '--epochs'" in r.output and "Traceback" not in r.output


_CV_RANGE = "val_fraction must be in (0, 0.5) for cv. Received: "


@pytest.mark.parametrize(
    ("command", "args", "named"),
    [
        ("train", ["--convs-per-block", "0"], "Invalid value for '--convs-per-block'"),
        ("train", ["--image-size", "4"], "Invalid value for '--image-size'"),
        ("cv", ["--folds", "1"], "Invalid value for '--folds'"),
        ("ingest", ["--image-size", "0"], "Invalid value for '--image-size'"),
        ("ingest", ["--dicom-window", "50", "10"], "Invalid value for '--dicom-window'"),
        ("ingest", ["--image-size", "8"], "Invalid value for '--image-size'"),
        ("ingest", ["--workers", "0"], "Invalid value for '--workers'"),
        ("train", ["--seed", "99999999999"], "Invalid value for '--seed'"),
        ("train", ["--implant", "100000000"], "Invalid value for '--implant'"),
        ("cv", ["--batch-size", "100000000"], "Invalid value for '--batch-size'"),
        (
            "train",
            ["--val-fraction", "0.5", "--test-fraction", "0.6", "--epochs", "3"],
            "Invalid combination of '--val-fraction' and '--test-fraction'",
        ),
        # NP8: cv's own range, named by its option, never train's unused test share
        *(
            ("cv", ["--val-fraction", v, "--epochs", "3"], f"'--val-fraction': {_CV_RANGE}{got}.")
            for v, got in (("0.9", "0.9"), ("0.6", "0.6"), ("0", "0.0"))
        ),
    ],
)
def test_bad_settings_are_refused_naming_the_option_typed(
    tmp_path, class_folder, command, args, named
):
    """A config error caused by an option the user typed names that option (the flag, not the
    config field), exits as a usage error (2) and writes nothing."""
    store = tmp_path / "s.zarr"
    r = CliRunner().invoke(main, [command, str(class_folder), "--store", str(store), *args])
    assert r.exit_code == 2, r.output
    assert named in r.output and "Traceback" not in r.output
    assert "--epochs" not in r.output.split("Error:")[1]  # the valid option is not blamed
    if command == "cv":
        assert "test_fraction" not in r.output  # cv holds out no test share
    assert not store.exists()


def test_train_and_cv_options_are_derived_from_the_configs():
    # every config option's default and choices come from mriscan.config, none restated
    from mriscan.cli import _TRAIN_OPTIONS, _field
    from mriscan.config import CVConfig, TrainConfig

    for name in ("train", "cv"):
        params = {p.name: p for p in main.commands[name].params}
        for path, flag in _TRAIN_OPTIONS:
            param = params["cfg__" + path.replace(".", "__")]
            f, default, _ = _field(TrainConfig, path)
            assert param.default == default and flag in param.opts, (name, path)
            if "choices" in f.metadata:
                assert tuple(param.type.choices) == f.metadata["choices"], (name, path)
    cv_params = {p.name: p.default for p in main.commands["cv"].params}
    assert cv_params["cfg__folds"] == CVConfig().folds
    assert cv_params["cfg__repeats"] == CVConfig().repeats


def test_only_typed_options_reach_the_config(monkeypatch, tmp_path, class_folder):
    # cv's own default verbosity ("line") must survive: --verbose-fit was not typed
    import mriscan.training.crossval as crossval

    seen = {}

    def fake_cv(data, cfg, **kw):
        seen["cfg"] = cfg
        raise SystemExit(0)

    monkeypatch.setattr(crossval, "cross_validate", fake_cv)
    args = ["cv", str(class_folder), "--store", str(tmp_path / "s.zarr"), "--folds", "3"]
    CliRunner().invoke(main, [*args, "--learning-rate", "0.01", "--no-mirror"])
    cfg = seen["cfg"]
    assert cfg.folds == 3 and cfg.repeats == 1
    assert cfg.train.runtime.verbose == "line" and cfg.train.optimizer.learning_rate == 0.01
    assert cfg.train.model.mirror is False and cfg.train.fit.epochs == 45


def test_image_size_that_disagrees_with_a_store_is_an_error(tmp_path, class_folder):
    store = tmp_path / "s.zarr"
    runner = CliRunner()
    r = runner.invoke(
        main, ["ingest", str(class_folder), "--store", str(store), "--image-size", "32"]
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["train", str(store), "--image-size", "64", "--out", str(tmp_path)])
    assert r.exit_code == 1 and "holds 32×32 slices" in r.output


@pytest.mark.slow
def test_cv_writes_its_artifacts_with_the_chosen_validation_share(tmp_path):
    raw = tmp_path / "raw"
    runner = CliRunner()
    assert runner.invoke(main, ["synth", str(raw), "--count", "40"]).exit_code == 0
    out = tmp_path / "art"
    args = ["cv", str(raw), "--store", str(tmp_path / "s.zarr"), "--out", str(out)]
    args += ["--folds", "2", "--epochs", "1", "--image-size", "32", "--pretrain", "0"]
    r = runner.invoke(main, [*args, "--val-fraction", "0.3"])
    assert r.exit_code == 0, r.output
    assert "2-fold CV × 1, 40 slices" in r.output and "roc_auc" in r.output
    assert f"decision: {THRESHOLD_RULE_TEXT['platt']}" in r.output  # the rule, named
    m = json.loads((out / "cv" / "metrics.json").read_text())
    assert m["protocol"]["val_fraction"] == 0.3
    assert "30% of each training fold" in m["protocol"]["description"]
    assert len(m["accuracy"]["per_fold"]) == 2
    assert (out / "cv" / "oof_predictions.csv").is_file()


def test_a_full_disk_is_one_line_and_keeps_the_store(class_folder, tmp_path, monkeypatch):
    import errno

    import mriscan.store.files as files

    store = tmp_path / "s.zarr"
    runner = CliRunner()
    assert runner.invoke(main, ["ingest", str(class_folder), "--store", str(store)]).exit_code == 0
    index_before = (store / "index.json").read_bytes()
    (class_folder / "yes" / "extra.png").write_bytes(
        (class_folder / "yes" / "yes1.png").read_bytes()[:-1] + b"\0"
    )

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(store / "index.json"))

    monkeypatch.setattr(files.os, "fsync", full)
    r = runner.invoke(main, ["ingest", str(class_folder), "--store", str(store)])
    assert r.exit_code == 1 and "no space left on the device" in r.output
    assert "Traceback" not in r.output
    # a rename refused (an immutable target): the target is named, not the temporary file
    # (tester26 LOW: "while writing .x.png.123.tmp")

    def immutable(*a, **k):
        raise OSError(errno.EPERM, "Operation not permitted", "/o/.m.png.1.tmp", None, "/o/m.png")

    monkeypatch.setattr(files.os, "fsync", immutable)
    r = runner.invoke(main, ["ingest", str(class_folder), "--store", str(store)])
    assert "Stopped: operation not permitted while replacing /o/m.png." in r.output, r.output
    monkeypatch.undo()
    assert (store / "index.json").read_bytes() == index_before
    assert runner.invoke(main, ["verify", "--store", str(store)]).exit_code == 0


def test_evaluate_refuses_data_and_store_together(tmp_path):
    model = tmp_path / "m.keras"
    model.write_bytes(b"x")
    res = CliRunner().invoke(
        main,
        ["evaluate", str(tmp_path), "--store", str(tmp_path / "s.zarr"), "--model", str(model)],
    )
    assert res.exit_code == 2 and "Give DATA or --store, not both" in res.output
    assert "does not exist" not in res.output


def test_ingest_into_an_existing_store_keeps_its_preprocessing_unless_typed(class_folder, tmp_path):
    """A second ingest without options (e.g. --merge of another collection) uses the store's
    own settings; a typed option that differs is still refused, naming the store's."""
    runner = CliRunner()
    store = tmp_path / "s.zarr"
    r = runner.invoke(
        main, ["ingest", str(class_folder), "--store", str(store), "--image-size", "32"]
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["ingest", str(class_folder), "--store", str(store)])
    assert r.exit_code == 0 and "added 0" in r.output, r.output
    r = runner.invoke(
        main, ["ingest", str(class_folder), "--store", str(store), "--image-size", "64"]
    )
    assert r.exit_code != 0 and "--image-size 32" in r.output


def test_ingest_class_map_says_where_a_class_map_goes_and_writes_nothing(class_folder, tmp_path):
    import shlex

    store = tmp_path / "my stores" / "s.zarr"  # a space: the command shown must quote it
    r = CliRunner().invoke(
        main,
        ["ingest", str(class_folder), "--store", str(store), "--class-map", "tumor=yes;h=no"],
    )
    assert r.exit_code == 2 and not store.exists()
    assert "ingest takes no --class-map" in r.output
    # the store as DATA: it keeps every setting of the ingest (tester23: RAW_DIR --store
    # would ingest again with train's defaults, without --image-size or --modality)
    assert "Run this ingest without --class-map" in r.output
    assert f"mriscan train {shlex.quote(str(store))} --class-map 'tumor=yes;h=no'" in r.output
    assert (
        "--class-map"
        not in CliRunner().invoke(main, ["ingest", "--help"]).output.split("Options:")[1]
    )  # hidden: not an ingest setting


def test_a_mistyped_ingest_option_is_not_offered_the_hidden_class_map(tmp_path):
    """``--class`` is no ingest option; click suggested the hidden ``--class-map``, which
    ingest then refuses (tester22 LOW). The suggestions are options --help lists."""
    r = CliRunner().invoke(main, ["ingest", str(tmp_path), "--class", "yes"])
    assert r.exit_code == 2 and "No such option" in r.output and "--class-map" not in r.output
    r = CliRunner().invoke(main, ["ingest", str(tmp_path), "--stric"])
    assert r.exit_code == 2 and "--strict" in r.output  # a listed option is still suggested


def test_ingest_compress_option_chooses_the_codec_of_a_new_store(class_folder, tmp_path):
    """--compress makes Blosc-LZ4 shards holding the same slices as the raw default; an
    existing store keeps its codec: the other flag is refused (nothing written), no flag adds."""
    from mriscan.store import ImageStore

    runner = CliRunner()
    raw, packed = tmp_path / "raw.zarr", tmp_path / "lz4.zarr"
    base = ["ingest", str(class_folder), "--image-size", "32"]
    assert "~79% of the raw" in runner.invoke(main, ["ingest", "--help"]).output
    r = runner.invoke(main, [*base, "--store", str(raw)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, [*base, "--store", str(packed), "--compress"])
    assert r.exit_code == 0, r.output
    with ImageStore.open(raw) as a, ImageStore.open(packed) as b:
        assert not a.compressed and b.compressed
        assert len(a) == len(b) == 12
        assert (a.read_batch(range(12))[0] == b.read_batch(range(12))[0]).all()
    assert "Blosc-LZ4" in runner.invoke(main, ["info", "--store", str(packed)]).output
    before = (packed / "index.json").read_bytes()
    r = runner.invoke(main, [*base, "--store", str(packed), "--no-compress"])
    assert r.exit_code == 1 and "holds compressed slices" in r.output
    assert "Leave the option out" in r.output and "Nothing was written" in r.output
    assert (packed / "index.json").read_bytes() == before
    r = runner.invoke(main, [*base, "--store", str(raw), "--compress"])
    assert r.exit_code == 1 and "holds raw (uncompressed) slices" in r.output
    r = runner.invoke(main, [*base, "--store", str(packed)])  # no flag: the store's codec
    assert r.exit_code == 0 and "added 0" in r.output


@pytest.mark.parametrize("fmt", ["dicom", "nifti"])
def test_synth_writes_scanner_data_that_ingests_by_patient_and_series(tmp_path, fmt):
    """Issue 18: `mriscan synth --format dicom|nifti`. DICOM: made-up patients with several
    series each, MONOCHROME1 and 2, with and without a window; ingested, every slice is read,
    labelled by its class folder, one patient's series share one split group, the headers'
    names never reach the store. NIfTI: volumes in several voxel orders, one unit each."""
    import pydicom

    from mriscan.ingest import IngestConfig, ingest
    from mriscan.preprocess import PreprocessConfig
    from mriscan.splits import patient_keys
    from mriscan.store import ImageStore

    raw, again = tmp_path / "raw", tmp_path / "again"
    opts = ["--format", fmt, "--patients", "4", "--series-per-patient", "2", "--slices", "5"]
    opts += ["--canvas", "48", "--seed", "3"]
    r = CliRunner().invoke(main, ["synth", str(raw), *opts])
    assert r.exit_code == 0, r.output
    if fmt == "dicom":
        assert "Wrote 2 yes/ and 2 no/ made-up patients (8 DICOM series, 40 slices)" in r.output
        files = sorted(raw.rglob("*.dcm"))
        assert len(files) == 40
        heads = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
        assert {h.PhotometricInterpretation for h in heads} == {"MONOCHROME1", "MONOCHROME2"}
        assert {"WindowCenter" in h for h in heads} == {True, False}
        assert (
            len({h.PatientID for h in heads}) == 4
            and len({h.SeriesInstanceUID for h in heads}) == 8
        )
    else:
        assert "Wrote 4 yes/ and 4 no/ NIfTI volumes (40 slices)" in r.output
        names = sorted(p.name for p in raw.rglob("*.nii.gz"))
        assert len(names) == 8 and len({n.split("_")[1] for n in names}) >= 6  # voxel orders
    assert CliRunner().invoke(main, ["synth", str(again), *opts]).exit_code == 0
    assert sorted(p.read_bytes() for p in again.rglob("*.*") if p.is_file()) == sorted(
        p.read_bytes() for p in raw.rglob("*.*") if p.is_file()
    )  # seeded
    ingest(raw, tmp_path / "s.zarr", IngestConfig(PreprocessConfig(size=32)))
    with ImageStore.open(tmp_path / "s.zarr") as store:
        recs = store.index.records
        by_class = {n: int((store.labels == k).sum()) for k, n in enumerate(store.class_names)}
        if fmt == "dicom":
            assert by_class == {"no": 20, "yes": 20}
            patients: dict[str, set[int]] = {}
            for i, rec in enumerate(recs):
                (key,) = patient_keys(rec.group_key)
                patients.setdefault(key, set()).add(int(store.groups[i]))
                assert rec.source.startswith("dicom/")
            assert len(patients) == 4 and all(len(g) == 1 for g in patients.values())
            series = {rec.source.split("/")[1] for rec in recs}
            assert len(series) == 8
            stored = b"".join(
                p.read_bytes() for p in (tmp_path / "s.zarr").rglob("*") if p.is_file()
            )
            assert b"Synth" not in stored and b"SYN-3" not in stored  # made-up names stay out
        else:
            assert set(by_class) == {"no", "yes"} and 0 < by_class["yes"] <= 20
            volumes = {rec.source.rsplit("#", 1)[0] for rec in recs}
            assert len(volumes) == 8 and all(rec.source.startswith("nifti/") for rec in recs)


@pytest.mark.parametrize("text", ["", ";", " ", " ; \n", "@empty.txt", "@comments.txt"])
def test_a_class_map_that_names_no_class_is_refused_by_every_command(tmp_path, monkeypatch, text):
    """An empty class map (an empty or comment-only @FILE, '', ';', ' ') is refused by every
    command that takes --class-map, before any work, instead of being read as "no map" (which
    trained the data's classes as they are: another task, in the --out meant for this one)."""
    from mriscan.cli import _ClassMap

    runner = CliRunner()
    commands = [
        name
        for name, cmd in main.commands.items()
        if any(isinstance(p.type, _ClassMap) for p in cmd.params)
    ]
    assert {"train", "cv", "evaluate"} <= set(commands)
    import types

    def reached(*args, **kwargs):
        raise AssertionError("the command ran with a class map that names no class")

    # should the map get through, fail at once instead of training (without importing keras)
    for module, name in (
        ("mriscan.training.workflow", "train"),
        ("mriscan.training.crossval", "cross_validate"),
        ("mriscan.evaluate", "evaluate"),
    ):
        fake = types.ModuleType(module)
        setattr(fake, name, reached)
        monkeypatch.setitem(sys.modules, module, fake)
    monkeypatch.chdir(tmp_path)  # the commands' default paths (data/, artifacts/) lie here
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "comments.txt").write_text("# yes=glioma,meningioma,pituitary\n#no=notumor\n\n")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    for name in commands:
        r = runner.invoke(main, [name, "--class-map", text])
        assert r.exit_code == 2, (name, r.output)
        assert "names no class" in r.output and "leave --class-map out" in r.output, r.output
        if text.startswith("@"):
            assert f"The class map file {text[1:]} names no class" in r.output
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written


def test_convs_per_block_reaches_the_model_and_zero_is_refused(tmp_path):
    """--convs-per-block N builds N 3×3 convolutions in each of the four blocks (the saved
    model has 4·N); 0 is refused in one line before anything is trained."""
    import keras

    from tests.conftest import write_class_folders

    class_folder = write_class_folders(tmp_path / "data", ("no", "yes"), n_per_class=10)
    common = ["--store", str(tmp_path / "s.zarr"), "--epochs", "1", "--image-size", "32"]
    common += ["--pretrain", "0", "--verbose-fit", "silent"]
    runner = CliRunner()
    for bad, why in (("0", "a positive integer"), ("1000000", "at most 8")):
        r = runner.invoke(main, ["train", str(class_folder), *common, "--convs-per-block", bad,
                                 "--out", str(tmp_path / "bad")])  # fmt: skip
        assert r.exit_code == 2 and why in r.output and "Traceback" not in r.output, r.output
        assert "'--convs-per-block'" in r.output
        assert not (tmp_path / "bad" / "models").exists()
    out = tmp_path / "two"
    r = runner.invoke(main, ["train", str(class_folder), *common, "--convs-per-block", "2",
                             "--out", str(out), "--val-fraction", "0.3", "--test-fraction",
                             "0.3"])  # fmt: skip
    assert r.exit_code == 0, r.output
    model = keras.saving.load_model(out / "models" / "best_model.keras", compile=False)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert len(convs) == 8


def test_series_lines_of_predict_never_print_a_probability_equal_to_its_threshold():
    """A series at P 0.50574 against a threshold of 0.50638 is labelled no; printed to 3
    decimals both read 0.506, so the line shows as many decimals as tell them apart. A
    threshold of 0.99999 is not printed as 1.000. A K-class series shows P of its label's
    class and the tumor probability, never the tumor probability as if it were the label's."""
    from mriscan.cli import _threshold_text, _unit_probability

    assert _unit_probability({"probability": 0.50574, "label": "no"}, 0.50638) == "P = 0.5057, "
    assert _unit_probability({"probability": 0.7, "label": "yes"}, 0.5) == "P = 0.700, "
    assert _threshold_text(0.99999) == "0.99999" and _threshold_text(0.0000123) == "1.23e-05"
    assert _threshold_text(0.24394) == "0.24394" and _threshold_text(1.0) == "1.000"
    row = {
        "label": "pituitary",
        "p_pituitary": 0.28,
        "p_notumor": 0.209,
        "tumor_probability": 0.791,
    }
    assert _unit_probability(row, None) == "P(pituitary) = 0.280, tumor probability 0.791, "
    assert _unit_probability({"label": "b", "p_b": 0.5}, None) == "P(b) = 0.500, "


def test_train_and_evaluate_print_a_threshold_that_rounds_to_one_with_its_digits(capsys):
    """train/evaluate's metrics header shows a threshold of 0.99999 as such, not as 1.000
    (which would read as one that no probability reaches)."""
    from mriscan.cli import _print_metrics

    m = {
        "n": 4,
        "threshold": 0.99999,
        "threshold_rule": "given",
        "accuracy": 0.5,
        "per_class": {
            c: {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2} for c in ("no", "yes")
        },
        "class_names": ["no", "yes"],
        "confusion_matrix": [[1, 1], [1, 1]],
    }
    _print_metrics("Test split", m)
    first = capsys.readouterr().out.splitlines()[0]
    assert first == "Test split (n=4, threshold 0.99999: given):"


def _interrupt_inside_a_gc_callback() -> None:
    """Send this process SIGINT from inside a garbage-collector callback, where JAX's
    ``_xla_gc_callback`` runs while TensorFlow and Keras load."""
    import gc
    import os
    import signal

    def callback(phase, info):
        if phase == "start":
            gc.callbacks.remove(callback)
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(10_000):  # the handler runs here, inside the callback
                pass

    gc.callbacks.append(callback)
    gc.collect()


def test_a_ctrl_c_while_keras_loads_stops_the_command_even_inside_a_gc_callback():
    """A KeyboardInterrupt raised inside a gc callback is printed and dropped by Python (the
    fourteenth session's check lost a Ctrl-C this way: the run trained to the end). Inside
    _keeping_ctrl_c the Ctrl-C is recorded instead, the block runs to its end, and
    KeyboardInterrupt is raised after it; the default handler is back afterwards."""
    import signal

    from mriscan.cli import _keeping_ctrl_c

    # Python's own handler, as in a terminal (a background job, as CI may be, starts with
    # SIGINT ignored)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _check_ctrl_c_is_kept(_keeping_ctrl_c)
    finally:
        signal.signal(signal.SIGINT, previous)


def _check_ctrl_c_is_kept(_keeping_ctrl_c) -> None:
    import signal
    import sys

    dropped = []
    hook, sys.unraisablehook = sys.unraisablehook, lambda u: dropped.append(u.exc_type)
    try:
        _interrupt_inside_a_gc_callback()  # without the guard: lost
    finally:
        sys.unraisablehook = hook
    assert dropped == [KeyboardInterrupt]

    finished = []
    with pytest.raises(KeyboardInterrupt), _keeping_ctrl_c():
        _interrupt_inside_a_gc_callback()
        finished.append(True)
    assert finished == [True]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with _keeping_ctrl_c():  # no Ctrl-C: nothing raised
        finished.append(True)
    assert finished == [True, True]


def test_keeping_ctrl_c_leaves_an_ignored_sigint_ignored():
    """A job started with SIGINT ignored (a background job of a shell script) keeps ignoring
    it: the guard installs nothing there."""
    import os
    import signal

    from mriscan.cli import _keeping_ctrl_c

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with _keeping_ctrl_c():
            os.kill(os.getpid(), signal.SIGINT)
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("command", ["train", "cv", "evaluate"])
def test_the_help_of_commands_that_take_data_says_a_manifest_is_data(command):
    """train, cv and evaluate ingest a CSV manifest given as DATA; their --help says so."""
    r = CliRunner().invoke(main, [command, "--help"])
    assert r.exit_code == 0 and "CSV manifest (path,label[,group]" in " ".join(r.output.split())


def test_ingest_lists_one_line_per_file_with_odd_name_bytes_escaped(tmp_path):
    """A reason over several lines (nibabel's 4x4 affine) is one line in ingest's list, and a
    file name that is not UTF-8 is shown with \\xNN, as predict shows it (F13, tester 18)."""
    import os

    import nibabel as nib
    import numpy as np

    from mriscan.synth_scanner import phantom_volume, stack_to_ras, write_dicom_series

    raw = tmp_path / "raw"
    write_dicom_series(raw / "no" / "s", phantom_volume(1, n_slices=2, canvas=32))
    vol = (stack_to_ras(phantom_volume(2, n_slices=4, canvas=32)) * 1000).astype(np.int16)
    img = nib.Nifti1Image(vol, np.eye(4))
    h = img.header
    h["qform_code"], h["sform_code"] = 0, 1
    h["srow_x"], h["srow_y"], h["srow_z"] = [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0]
    (raw / "yes").mkdir()
    (raw / "yes" / "singular.nii").write_bytes(h.binaryblock + b"\0" * 4 + vol.tobytes())
    good = write_dicom_series(raw / "yes" / "t", phantom_volume(3, n_slices=2, canvas=32))
    odd = raw / "yes" / os.fsdecode(b"bad\xffname.dcm")
    odd.write_bytes(good[0].read_bytes()[:-100])
    res = CliRunner().invoke(
        main, ["ingest", str(raw), "--store", str(tmp_path / "s.zarr"), "--image-size", "32"]
    )
    assert res.exit_code == 0, res.output
    (affine,) = [x for x in res.output.splitlines() if "singular.nii" in x]
    assert "the affine cannot be oriented" in affine and "[0. 0. 0. 0.] [0. 0. 1. 0.]" in affine
    assert "    yes/bad\\xffname.dcm: " in res.output


@pytest.mark.parametrize("verbose, pydicom_lines", [(0, 0), (1, 1)])
def test_library_warnings_are_shown_once(tmp_path, verbose, pydicom_lines):
    """nibabel's header fixes (its own stderr handler) reach the console once under the CLI's
    logging (F13, tester 18); pydicom's warnings (logged and warned) once from -v on, and not
    by default: they name no file and may quote a header value (tester 19 L3)."""
    code = (
        f"import logging; from mriscan.cli import main; main.callback({verbose}); "
        "import nibabel\n"
        "logging.getLogger('nibabel.global').warning('nib-said-this')\n"
        "from pydicom import config; from pydicom.valuerep import validate_value\n"
        "validate_value('IS', '1A-pyd', config.WARN)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stderr.count("nib-said-this") == 1, out.stderr
    assert out.stderr.count("Invalid value for VR IS: '1A-pyd'") == pydicom_lines, out.stderr


@pytest.mark.parametrize(
    ("command", "args", "named"),
    [
        ("predict", ["--threshold", "nan"], "Invalid value for '--threshold'"),
        ("predict", ["--threshold", "1.5"], "Invalid value for '--threshold'"),
        ("predict", ["--batch-size", "0"], "Invalid value for '--batch-size'"),
        ("predict", ["--workers", "-2"], "Invalid value for '--workers'"),
        ("explain", ["--dicom-out", "FILE"], "Invalid value for '--dicom-out'"),
    ],
)
def test_predict_and_explain_refuse_bad_options_before_loading_anything(
    tmp_path, command, args, named
):
    """Values that crashed with a traceback (batch size 0, negative workers) or were taken
    silently (a NaN threshold; --dicom-out naming a file, found only after the model ran) are
    usage errors naming the option (verifier, sixteenth session)."""
    model = tmp_path / "m.keras"
    model.write_bytes(b"not read: the options are refused first")
    afile = tmp_path / "afile"
    afile.write_text("x")
    args = [str(afile) if a == "FILE" else a for a in args]
    r = CliRunner().invoke(main, [command, str(model), str(tmp_path), *args])
    assert r.exit_code == 2 and named in r.output and "Traceback" not in r.output, r.output


@pytest.mark.parametrize("args, status", [(["--version"], 0), (["--no-such-option"], 2)])
def test_a_ctrl_c_while_python_shuts_down_ends_the_process_without_a_traceback(args, status):
    """The console script (``entry``) keeps the command's exit status, then restores SIGINT's
    default action: a Ctrl-C during the interpreter's teardown (here from an atexit handler,
    which runs after the command returned) ends the process by the signal, where it printed a
    KeyboardInterrupt traceback over the command's output (tester24 #7)."""
    import signal

    code = (
        "import atexit, os, signal, sys\n"
        "atexit.register(lambda: os.kill(os.getpid(), signal.SIGINT))\n"
        f"sys.argv = ['mriscan', *{args!r}]\n"
        "from mriscan.cli import entry\n"
        "entry()\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == -signal.SIGINT, (run.returncode, run.stderr)
    assert "Traceback" not in run.stderr and "KeyboardInterrupt" not in run.stderr
    # without the shutdown SIGINT the command's own status stands
    plain = subprocess.run(
        [sys.executable, "-c", code.replace("atexit.register", "(lambda f: None)")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert plain.returncode == status, plain.stderr


def test_an_undefined_macro_f1_gets_no_note_on_the_classes_it_averages(capsys):
    """One class in the data: macro-F1 is undefined, so the note "macro-F1 over the classes
    present" would contradict it (tester26 MED); a defined one keeps the note."""
    from mriscan.cli import _print_metrics

    pc = {"no": {"precision": float("nan"), "recall": float("nan"), "f1": float("nan"),
                 "support": 0},
          "yes": {"precision": 1.0, "recall": 0.8, "f1": 0.889, "support": 5}}  # fmt: skip
    m = {"n": 5, "per_class": pc, "class_names": ["no", "yes"], "sensitivity": 0.8,
         "confusion_matrix": [[0, 0], [1, 4]], "macro_f1": float("nan")}  # fmt: skip
    _print_metrics("Test", m)
    out = capsys.readouterr().out
    assert "macro-F1 undefined" in out and "over the classes present" not in out
    _print_metrics("Test", {**m, "macro_f1": 0.889})
    assert "(macro-F1 over the classes present: yes; no without a slice, left out)" in (
        capsys.readouterr().out
    )


@pytest.mark.parametrize(
    ("command", "module", "name"),
    [("train", "mriscan.training.workflow", "train"),
     ("cv", "mriscan.training.crossval", "cross_validate")],
)  # fmt: skip
def test_no_data_and_an_existing_store_trains_on_that_store(
    command, module, name, class_folder, tmp_path, monkeypatch
):
    """`mriscan train|cv --store S` without DATA used the default data (phantoms, or
    data/raw) and ingested them into S, refused as another source when S holds real slices:
    S itself is the data."""
    import importlib

    store = tmp_path / "s.zarr"
    runner = CliRunner()
    r = runner.invoke(main, ["ingest", str(class_folder), "--store", str(store)])
    assert r.exit_code == 0, r.output
    given = []

    def stand_in(data, *args, **kwargs):
        given.append(data)
        raise RuntimeError("stop after the data is resolved")

    monkeypatch.setattr(importlib.import_module(module), name, stand_in)
    r = runner.invoke(main, [command, "--store", str(store), "--out", str(tmp_path / "o")])
    assert given == [store], r.output
    assert f"No DATA: using the store {store}." in r.output
    # a --store that is no store, without DATA: a usage error, nothing written, no phantoms
    # (tester30: a typo trained on phantoms; class folders as --store became a store)
    typo = tmp_path / "typo.zarr"
    for path, what in ((typo, "does not exist"), (class_folder, "is not a store")):
        before = sorted(p.name for p in class_folder.rglob("*"))
        r = runner.invoke(main, [command, "--store", str(path), "--out", str(tmp_path / "o")])
        assert r.exit_code == 2 and f"--store {path} {what}, and no DATA was given" in r.output
        fix = (
            f"`mriscan {command} DATA --store {path}`"
            if path == typo
            else f"`mriscan {command} {path} --store NEW_STORE` if it holds the data"
        )
        assert fix in " ".join(r.output.split()), r.output
        assert not (tmp_path / "typo.zarr").exists()
        assert sorted(p.name for p in class_folder.rglob("*")) == before
    assert given == [store]
    # a store as DATA and another --store: the store is the data, and the unused --store said
    other = tmp_path / "other.zarr"
    r = runner.invoke(main, [command, str(store), "--store", str(other), "--out", str(tmp_path)])
    assert given == [store, store] and not other.exists()
    assert f"DATA {store} is a store: --store {other} is not used." in r.output


@pytest.mark.parametrize("command", ["train", "cv"])
def test_a_store_s_size_is_checked_before_tensorflow_loads(command, class_folder, tmp_path):
    """`train STORE --image-size 64` on a 32² store was refused only after TensorFlow's
    start-up (tester30): now before, with the same message."""
    store = tmp_path / "s.zarr"
    runner = CliRunner()
    args = ["ingest", str(class_folder), "--store", str(store), "--image-size", "32"]
    assert runner.invoke(main, args).exit_code == 0
    r = runner.invoke(main, [command, str(store), "--image-size", "64", "--out", str(tmp_path)])
    assert r.exit_code == 1, r.output
    assert "--image-size 64 was given, but the store" in r.output and "32×32" in r.output
    assert "Loading TensorFlow" not in r.output and "Traceback" not in r.output


def test_a_threshold_is_printed_as_given_up_to_6_decimals():
    """ "yes at P ≥ 0.736" above a row "P = 0.73587, yes" for --threshold 0.73585 read as a
    row on the wrong side (tester31): the threshold is printed to 6 decimals, 3 at least."""
    from mriscan.cli import _threshold_text

    assert _threshold_text(0.73585) == "0.73585"
    assert _threshold_text(0.5) == "0.500" and _threshold_text(0.605) == "0.605"
    assert _threshold_text(0.58234127) == "0.58234127"
    # a P beside it gets the digits that tell them apart (tester32: both read 0.551142)
    from mriscan.cli import _unit_probability

    assert _unit_probability({"probability": 0.5511422952}, 0.5511425) == "P = 0.5511423, "
    assert _threshold_text(0.5511425) == "0.5511425"
    assert _threshold_text(0.99999) == "0.99999" and _threshold_text(1.0) == "1.000"
