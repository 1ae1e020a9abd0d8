"""The audit on small synthetic sets that plant one problem each, a clean set, and the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from mriscan.audit import (
    EXIT_BOTH,
    EXIT_CONFLICT,
    EXIT_LEAKAGE,
    AuditConfig,
    AuditError,
    audit,
)
from mriscan.cli import main

CFG = AuditConfig(folds=3, workers=2)


def _head(seed: int, size: tuple[int, int] = (96, 96)) -> np.ndarray:
    """A distinct smooth-textured elliptical head (every seed a different slice)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    ry, rx = rng.uniform(0.3, 0.45) * h, rng.uniform(0.3, 0.45) * w
    head = ((yy - h / 2) / ry) ** 2 + ((xx - w / 2) / rx) ** 2 < 1
    tex = ndimage.gaussian_filter(rng.normal(0, 1, (h, w)), 0.08 * min(h, w))
    img = head * (110 + 60 * tex / max(tex.std(), 1e-6))
    return np.clip(img, 0, 255).astype(np.uint8)


def _write(root: Path, classes: dict[str, list[tuple[int, tuple[int, int], str]]]) -> Path:
    """Class folders of PNG/JPEG heads: {class: [(seed, (h, w), ".png"|".jpg"), ...]}."""
    for name, items in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for k, (seed, size, ext) in enumerate(items):
            Image.fromarray(_head(seed, size)).save(root / name / f"{name}{k}_{seed}{ext}")
    return root


def _clean(root: Path, offset: int = 0) -> Path:
    """Two classes, 10 distinct slices each, same sizes and format in both."""
    return _write(
        root,
        {
            "no": [(offset + i, (96, 96), ".png") for i in range(10)],
            "yes": [(offset + 100 + i, (96, 96), ".png") for i in range(10)],
        },
    )


def test_clean_set_finds_nothing(tmp_path):
    r = audit([_clean(tmp_path / "clean")], config=CFG)
    s = r["sets"][0]
    assert s["decoded"] == 20
    assert s["exact"]["groups"] == 0 and s["pixels"]["groups"] == 0
    assert s["near"]["pairs"] == 0 and s["groups"]["count"] == 20
    assert s["label_conflicts"] == []
    assert not s["shortcut"]["flagged"]
    assert r["exit_status"] == 0


def test_planted_label_conflict_is_listed(tmp_path):
    root = _clean(tmp_path / "conflict")
    shutil.copy(root / "no" / "no3_3.png", root / "yes" / "copy_of_no3.png")
    r = audit([root], config=CFG)
    s = r["sets"][0]
    assert s["exact"]["groups"] == 1
    assert [(c["a"], c["b"], c["kind"]) for c in s["label_conflicts"]] == [
        ("no/no3_3.png", "yes/copy_of_no3.png", "exact")
    ]
    assert r["exit_status"] == EXIT_CONFLICT


def test_same_pixels_and_near_duplicates_are_found(tmp_path):
    root = _clean(tmp_path / "dups")
    img = np.asarray(Image.open(root / "no" / "no2_2.png"))
    Image.fromarray(img).save(root / "no" / "same_pixels.png", compress_level=1)  # other bytes
    Image.fromarray(img).save(root / "no" / "reencoded.jpg", quality=70)  # near-duplicate
    s = audit([root], config=CFG)["sets"][0]
    assert s["pixels"]["groups"] == 1
    assert s["near"]["pairs"] == 3  # the three copies pairwise
    assert s["groups"]["count"] == 20
    assert s["label_conflicts"] == []


def test_size_shortcut_is_flagged_and_named(tmp_path):
    root = _write(
        tmp_path / "shortcut",
        {
            "no": [(i, (80 + 4 * (i % 5), 90 + 3 * (i % 4)), ".jpg") for i in range(24)],
            "yes": [(100 + i, (128, 128), ".png") for i in range(24)],
        },
    )
    s = audit([root], config=CFG)["sets"][0]
    assert s["shortcut"]["flagged"] and s["shortcut"]["auc"] >= 0.95
    assert {"height", "width", "format=PNG"} & set(s["shortcut"]["carriers"])


def test_duplicate_across_test_split_is_leakage(tmp_path):
    train = _clean(tmp_path / "train")
    test = _clean(tmp_path / "test", offset=1000)
    shutil.copy(train / "yes" / "yes4_104.png", test / "yes" / "leaked.png")
    r = audit([train], test=test, config=CFG)
    leak = r["leakage"]
    assert leak["leaked"] == 1 and leak["test_items"] == 21
    assert leak["by_class"]["yes"]["exact"] == 1 and leak["by_class"]["no"]["leaked"] == 0
    assert leak["worst"][0]["b"] == "yes/leaked.png"
    assert r["exit_status"] == EXIT_LEAKAGE


def test_multiclass_labels(tmp_path):
    root = _write(
        tmp_path / "four",
        {
            c: [(50 * k + i, (96, 96) if c != "d" else (64, 80), ".png") for i in range(9)]
            for k, c in enumerate("abcd")
        },
    )
    s = audit([root], config=CFG)["sets"][0]
    assert set(s["shortcut"]["per_class"]) == {"a", "b", "c", "d"}
    assert s["shortcut"]["per_class"]["d"]["auc"] >= 0.95


def test_store_with_split_json(tmp_path, class_folder):
    from mriscan.ingest import IngestConfig, ingest
    from mriscan.preprocess import PreprocessConfig
    from mriscan.store import ImageStore

    store = tmp_path / "s.zarr"
    ingest(class_folder, store, IngestConfig(preprocess=PreprocessConfig(size=32)))
    with ImageStore.open(store) as st:
        n, recs = len(st), st.index.records
    split = {
        "store": str(store),
        **{
            k: {"indices": idx, "sources": [recs[i].source for i in idx]}
            for k, idx in (("train", list(range(n - 3))), ("val", []), ("test", [n - 3, n - 2]))
        },
    }
    (tmp_path / "split.json").write_text(json.dumps(split))
    r = audit([store], split=tmp_path / "split.json", config=CFG)
    assert r["sets"][0]["kind"] == "store" and r["sets"][0]["decoded"] == n
    assert r["leakage"]["test_items"] == 2
    bad = {**split, "test": {"indices": [n + 5], "sources": ["x"]}}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(AuditError, match="is not a record of store"):
        audit([store], split=tmp_path / "bad.json", config=CFG)


def test_cli_exit_status_and_outputs(tmp_path):
    train = _clean(tmp_path / "train")
    test = _clean(tmp_path / "test", offset=1000)
    runner = CliRunner()
    out = tmp_path / "report"
    ok = runner.invoke(main, ["audit", str(train), "--out", str(out)])
    assert ok.exit_code == 0, ok.output
    assert (out / "audit.md").is_file() and (out / "audit.json").is_file()
    shutil.copy(train / "no" / "no1_1.png", test / "no" / "leaked.png")
    res = runner.invoke(
        main, ["audit", str(train), "--test", str(test), "--json", "--out", str(out)]
    )
    assert res.exit_code == EXIT_LEAKAGE
    payload = json.loads(res.output[res.output.index("{") :])
    assert payload["leakage"]["leaked"] == 1
    assert "Exit status" in runner.invoke(main, ["audit", "--help"]).output


def _tiny(root: Path, n: int = 2, offset: int = 0) -> Path:
    """Two classes of ``n`` distinct PNG heads each (too few to score a shortcut: fast)."""
    return _write(
        root,
        {
            "no": [(offset + i, (96, 96), ".png") for i in range(n)],
            "yes": [(offset + 100 + i, (96, 96), ".png") for i in range(n)],
        },
    )


def _truncated_jpeg(path: Path, seed: int = 77) -> None:
    """A JPEG cut after 300 bytes (as `head -c 300`): the header reads, the pixels do not."""
    tmp = path.with_suffix(".full.jpg")
    Image.fromarray(_head(seed)).save(tmp, quality=90)
    path.write_bytes(tmp.read_bytes()[:300])
    tmp.unlink()


def test_class_with_no_decodable_file_is_reported_not_a_crash(tmp_path):
    root = tmp_path / "one_bad"
    _write(root, {"yes": [(i, (96, 96), ".jpg") for i in range(3)]})
    (root / "no").mkdir()
    _truncated_jpeg(root / "no" / "broken.jpg")
    out = tmp_path / "report"
    res = CliRunner().invoke(main, ["audit", str(root), "--out", str(out)])
    assert res.exit_code == 0, res.output
    md = (out / "audit.md").read_text()
    assert "class 'no' has 0 decodable files" in md
    assert "`no/broken.jpg`: " in md  # the skipped file is named, with its reason
    report = json.loads((out / "audit.json").read_text())
    assert report["exit_status"] == 0
    no = report["sets"][0]["metadata_by_class"]["no"]
    assert no["slices"] == 0 and no["most_common_size"] is None and no["width"] is None
    assert report["sets"][0]["shortcut"]["auc"] is None
    assert "AUC undefined" in res.output and "AUC None" not in res.output


def test_a_failed_run_leaves_no_report_claiming_a_result(tmp_path):
    out = tmp_path / "report"
    runner = CliRunner()
    assert (
        runner.invoke(main, ["audit", str(_tiny(tmp_path / "ok")), "--out", str(out)]).exit_code
        == 0
    )
    assert (out / "audit.json").is_file()
    bad = tmp_path / "bad"
    for c in ("no", "yes"):
        (bad / c).mkdir(parents=True)
        _truncated_jpeg(bad / c / "x.jpg")
    res = runner.invoke(main, ["audit", str(bad), "--out", str(out)])
    assert res.exit_code == 1 and "could be decoded" in res.output
    assert not (out / "audit.json").exists() and not (out / "audit.md").exists()


def _scanner_folder(root: Path, dicom_only: bool = False) -> Path:
    """Class folders holding DICOM series and NIfTI volumes in folders named after (made-up)
    patients, beside PNGs unless ``dicom_only``."""
    from mriscan.synth_scanner import (
        FakePatient,
        phantom_volume,
        stack_to_ras,
        write_dicom_series,
        write_nifti,
    )

    for k, c in enumerate(("no", "yes")):
        pat = FakePatient(patient_id=f"FAKE-{k}", name=f"Doe^Jane{k}")
        write_dicom_series(root / c / f"Doe_Jane{k}", phantom_volume(k, n_slices=4), patient=pat)
    if not dicom_only:
        _write(root, {"no": [(1, (96, 96), ".png")], "yes": [(2, (96, 96), ".png")]})
        write_nifti(
            root / "yes" / "Smith_John.nii.gz",
            stack_to_ras(phantom_volume(9, n_slices=5, tumor=True)),
        )
        (root / "no" / "Roe_Richard.nii.gz").write_bytes(b"not a volume")
    return root


def test_dicom_and_nifti_in_class_folders_are_audited_under_pseudonyms(tmp_path):
    root = _scanner_folder(tmp_path / "scanner")
    out = tmp_path / "report"
    res = CliRunner().invoke(main, ["audit", str(root), "--out", str(out)])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "audit.json").read_text())
    s = report["sets"][0]
    assert s["decoded"] == 2 + 4 + 4 + 5  # PNGs, two DICOM series, one NIfTI volume
    assert s["classes"] == {"no": 5, "yes": 10}
    assert s["metadata_by_class"]["no"]["format"] == {"DICOM": 4, "PNG": 1}
    assert s["metadata_by_class"]["yes"]["format"] == {"DICOM": 4, "NIfTI": 5, "PNG": 1}
    # slices of one series / volume are one group, not independent samples
    assert s["groups"]["count"] == 5
    # the broken volume is listed, under a pseudonym; its path only on the console
    [skip] = s["skipped"]
    assert skip["source"].startswith("nifti-file/") and skip["reason"]
    assert "Roe_Richard" not in res.output and "--show-paths" in res.output
    shown = CliRunner().invoke(main, ["audit", str(root), "--out", str(out), "--show-paths"])
    assert shown.exit_code == 0 and "Roe_Richard.nii.gz" in shown.output
    text = (out / "audit.md").read_text() + (out / "audit.json").read_text()
    for secret in ("Doe", "Jane", "Smith", "Roe_"):
        assert secret not in text
    only = CliRunner().invoke(
        main, ["audit", str(_scanner_folder(tmp_path / "dcm", True)), "--out", str(out)]
    )
    assert only.exit_code == 0, only.output
    assert json.loads((out / "audit.json").read_text())["sets"][0]["decoded"] == 8


def test_a_dicom_file_under_two_classes_names_each_side_by_its_own_file(tmp_path):
    """One DICOM instance copied into the other class's folder: both copies hold the same
    slice pseudonym (it is the instance's), so the conflict row names each side by it and
    its file's pseudonym, and --show-paths lists the two files by path on the console; the
    report holds no path."""
    root = _scanner_folder(tmp_path / "scanner", dicom_only=True)
    first = root / "yes" / "Doe_Jane1" / "IM0001.dcm"
    shutil.copy(first, root / "no" / "Doe_Jane1_copy.dcm")
    out = tmp_path / "report"
    res = CliRunner().invoke(main, ["audit", str(root), "--out", str(out)])
    assert res.exit_code == EXIT_CONFLICT, res.output
    s = json.loads((out / "audit.json").read_text())["sets"][0]
    [exact] = [c for c in s["label_conflicts"] if c["kind"] == "exact"]
    assert exact["a"] != exact["b"] and exact["a_file"] != exact["b_file"]
    for side in ("a", "b"):
        assert exact[side].startswith("dicom/") and exact[side].endswith(
            f" in {exact[side + '_file']}"
        )
        assert exact[side + "_file"].startswith("dicom-file/")
    md = (out / "audit.md").read_text()
    assert f"`{exact['a']}`" in md and f"`{exact['b']}`" in md
    assert "Doe_Jane" not in md + json.dumps(s) and "Doe_Jane1_copy" not in res.output
    shown = CliRunner().invoke(main, ["audit", str(root), "--out", str(out), "--show-paths"])
    lines = [ln for ln in shown.output.splitlines() if ln.startswith("label conflict:")]
    assert any(str(first) in ln and "Doe_Jane1_copy.dcm" in ln and "exact" in ln for ln in lines)


def test_store_of_scanner_slices_is_not_reported_as_missing_files(tmp_path):
    from mriscan.ingest import IngestConfig, ingest
    from mriscan.preprocess import PreprocessConfig

    store = tmp_path / "s.zarr"
    ingest(_scanner_folder(tmp_path / "raw"), store, IngestConfig(preprocess=PreprocessConfig()))
    s = audit([store], config=CFG)["sets"][0]
    assert s["decoded"] == 15
    # the raw folder is recorded by pseudonym only: the plain images are not looked up, and
    # the note says why and what to do (DICOM/NIfTI items have no file names at all)
    assert any("by salted pseudonym only" in n for n in s["notes"])
    assert any("pseudonymous names by design" in n for n in s["notes"])


def test_exit_codes_differ_from_click_usage_and_bad_input_is_one_line(tmp_path, monkeypatch):
    assert (EXIT_LEAKAGE, EXIT_CONFLICT, EXIT_BOTH) == (3, 4, 7)
    runner = CliRunner()
    for args in (["audit", str(tmp_path / "nonexistent")], ["audit", "--bogus", str(tmp_path)]):
        res = runner.invoke(main, args)
        assert res.exit_code == 1, res.output
        assert len(res.output.strip().splitlines()) == 1 and res.output.startswith("Error:")
    help_text = runner.invoke(main, ["audit", "--help"]).output
    assert all(f"{c}  " in help_text for c in ("3", "4", "7"))

    def must_not_run(*a, **k):
        raise AssertionError("the audit ran although --out is unusable")

    monkeypatch.setattr("mriscan.audit.audit", must_not_run)
    (tmp_path / "file.txt").write_text("x")
    res = runner.invoke(
        main, ["audit", str(_tiny(tmp_path / "d")), "--out", str(tmp_path / "file.txt")]
    )
    assert res.exit_code == 1 and "is an existing file" in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)


def test_nested_copy_of_the_class_layout_is_refused_like_ingest(tmp_path):
    root = tmp_path / "kaggle"
    _tiny(root)
    _tiny(root / "brain_tumor_dataset")
    res = CliRunner().invoke(main, ["audit", str(root), "--out", str(tmp_path / "r")])
    assert res.exit_code == 1
    assert "nested copy of the class layout" in res.output
    assert "label conflicts" not in res.output


def test_tiny_sets_leave_the_auc_undefined_and_say_no_leakage(tmp_path):
    train, test = _tiny(tmp_path / "train"), _tiny(tmp_path / "test", offset=500)
    out = tmp_path / "r"
    res = CliRunner().invoke(main, ["audit", str(train), "--test", str(test), "--out", str(out)])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "audit.json").read_text())
    sc = report["sets"][0]["shortcut"]
    assert sc["auc"] is None and "too few" in sc["reason"]
    assert "metadata AUC undefined" in res.output and "None" not in res.output
    assert "no leakage" in res.output and "LEAKAGE" not in res.output
    assert "0.500" not in (out / "audit.md").read_text()


def test_split_items_retired_since_the_split_are_reported_and_audited_as_they_are_now(tmp_path):
    from mriscan.ingest import IngestConfig, ingest
    from mriscan.preprocess import PreprocessConfig
    from mriscan.store import ImageStore

    raw = _tiny(tmp_path / "raw", n=4)
    store, cfg = tmp_path / "s.zarr", IngestConfig(preprocess=PreprocessConfig(size=32))
    ingest(raw, store, cfg)
    with ImageStore.open(store) as st:
        src = [r.source for r in st.index.records]
    test_idx = [src.index(n) for n in ("no/no3_3.png", "yes/yes2_102.png", "yes/yes3_103.png")]
    train_idx = [i for i in range(len(src)) if i not in test_idx]
    split = {
        "store": str(store),
        **{
            k: {"indices": idx, "sources": [src[i] for i in idx]}
            for k, idx in (("train", train_idx), ("val", []), ("test", test_idx))
        },
    }
    (tmp_path / "split.json").write_text(json.dumps(split))
    before = audit([store], split=tmp_path / "split.json", config=CFG)
    assert before["leakage"]["leaked"] == 0 and before["exit_status"] == 0
    # after training: a test file overwritten with a copy of a training slice, another deleted
    shutil.copy(raw / "yes" / "yes0_100.png", raw / "yes" / "yes2_102.png")
    (raw / "yes" / "yes3_103.png").unlink()
    ingest(raw, store, cfg)
    out = tmp_path / "r"
    res = CliRunner().invoke(
        main, ["audit", str(store), "--split", str(tmp_path / "split.json"), "--out", str(out)]
    )
    assert res.exit_code == EXIT_LEAKAGE, res.output
    leak = json.loads((out / "audit.json").read_text())["leakage"]
    changed = {c["source"]: (c["change"], c["now"]) for c in leak["changed_since_split"]["test"]}
    assert changed == {
        "yes/yes2_102.png": ("overwritten", ["yes/yes2_102.png"]),
        "yes/yes3_103.png": ("deleted", []),
    }
    assert leak["test_items"] == 2 and leak["leaked"] == 1
    assert leak["worst"][0]["a"] == "yes/yes0_100.png" and leak["worst"][0]["kind"] == "exact"
    assert "Changed since the split was made" in (out / "audit.md").read_text()
    assert "changed since the split was made" in res.output


def test_an_empty_side_has_no_pairs_instead_of_a_crash(tmp_path):
    from mriscan.audit import _subset, check_cross, load_set

    aset = load_set(_tiny(tmp_path / "d"), CFG)
    empty = _subset(aset, [], "test")  # e.g. every test file of a split deleted since
    x = check_cross(aset, empty, CFG)
    assert x["b_items_matched"] == 0 and x["pairs"] == 0
    assert x["by_class"] == {
        "no": {"items": 0, "exact": 0, "pixels": 0, "near": 0, "leaked": 0, "share": 0.0},
        "yes": {"items": 0, "exact": 0, "pixels": 0, "near": 0, "leaked": 0, "share": 0.0},
    }


@pytest.mark.slow
def test_real_sets(real_data):
    """brain_mri vs figshare_br35h: the known duplicates, no conflict in brain_mri, the source
    confound of figshare_br35h, and the healthy slices they share (PROVENANCE.md)."""
    other = real_data.parent / "figshare_br35h"
    if not (other / "notumor").is_dir():
        pytest.skip(f"{other} not found")
    r = audit([real_data], test=other)
    bm, fs = r["sets"]
    assert bm["exact"]["groups"] == 22 and bm["groups"]["count"] == 201
    assert bm["label_conflicts"] == []
    notumor = fs["shortcut"]["per_class"]["notumor"]
    assert notumor["auc"] >= 0.99
    assert {"height", "width", "mode=L", "mode=RGB"} & set(notumor["carriers"])
    leak = r["leakage"]
    assert 600 <= leak["by_class"]["notumor"]["leaked"] <= 750
    assert 400 <= leak["levels"]["0.98"]["b_items"] <= 600
    assert r["exit_status"] & EXIT_LEAKAGE


def _patients(root: Path, plan: list[tuple[str, str, int]]) -> Path:
    """Class folders of DICOM series named after made-up patients: (class, patient, seed)."""
    from mriscan.synth_scanner import FakePatient, phantom_volume, write_dicom_series

    for c, name, seed in plan:
        pat = FakePatient(patient_id=f"FAKE-{name.upper()}", name=f"{name}^Jane")
        write_dicom_series(
            root / c / f"{name}_Jane_{seed}", phantom_volume(seed, n_slices=3), patient=pat,
            seed=seed,
        )  # fmt: skip
    return root


def test_patients_on_both_sides_are_leakage_listed_by_pseudonym(tmp_path):
    """Doe is in train (no) and in test (yes, another series): one shared patient, its 3 test
    slices; Roe (train only) and Poe (test only) are not. Folders of one audit share its salt;
    stores compare under one identifier key; a folder against a store cannot be checked."""
    train = _patients(tmp_path / "train", [("no", "Doe", 1), ("yes", "Roe", 2)])
    test = _patients(tmp_path / "test", [("no", "Poe", 3), ("yes", "Doe", 4)])
    out = tmp_path / "report"
    res = CliRunner().invoke(main, ["audit", str(train), "--test", str(test), "--out", str(out)])
    assert res.exit_code & EXIT_LEAKAGE, res.output
    report = json.loads((out / "audit.json").read_text())
    same = report["leakage"]["same_patient"]
    assert same["checked"] and same["patients"] == 1 and same["test_slices"] == 3
    assert same["test_patients"] == 2 and same["by_class"] == {"yes": 3}
    [shared] = same["shared"]
    assert shared["patient"].startswith("patient:") and shared["train_slices"] == 3
    md = (out / "audit.md").read_text()
    assert shared["patient"] in res.output and shared["patient"] in md
    assert "1 patient(s) on both sides" in res.output and "1 patients have slices" in md
    for secret in ("Doe", "Jane", "FAKE", "Roe", "Poe"):
        assert secret not in res.output + md + (out / "audit.json").read_text()

    apart = _patients(tmp_path / "other", [("no", "Moe", 5), ("yes", "Zoe", 6)])
    same = audit([train], test=apart, config=CFG)["leakage"]["same_patient"]
    assert same["checked"] and same["patients"] == 0 and same["shared"] == []

    from mriscan.ingest import IngestConfig, ingest
    from mriscan.preprocess import PreprocessConfig

    stores = []
    for name, root in (("train", train), ("test", test)):
        ingest(root, tmp_path / f"{name}.zarr", IngestConfig(preprocess=PreprocessConfig()))
        stores.append(tmp_path / f"{name}.zarr")
    same = audit([stores[0]], test=stores[1], config=CFG)["leakage"]["same_patient"]
    assert same["checked"] and same["patients"] == 1 and same["test_slices"] == 3
    # a folder beside a store of the user's identifier key is read with that key
    mixed = audit([stores[0]], test=test, config=CFG)["leakage"]["same_patient"]
    assert mixed["checked"] and mixed["patients"] == 1 and mixed["test_slices"] == 3


def test_a_folder_beside_a_store_of_the_identifier_key_is_checked_for_patients(
    tmp_path, monkeypatch
):
    """A class folder audited with a store made by ingest under the user's identifier key is
    read with that key: the one patient they share (Doe) is found whichever side the store
    is on, by the store's own hash. When the key file is another, or missing, the folder
    keeps the audit's own salt and the check says it cannot be made, and why."""
    from mriscan.audit import AUDIT_KEY, audit_key
    from mriscan.ingest import IngestConfig, ingest
    from mriscan.keys import identifier_key
    from mriscan.preprocess import PreprocessConfig
    from mriscan.store import ImageStore

    train = _patients(tmp_path / "train", [("no", "Doe", 1), ("yes", "Roe", 2)])
    test = _patients(tmp_path / "test", [("no", "Poe", 3), ("yes", "Doe", 4)])
    store, test_store = tmp_path / "train.zarr", tmp_path / "test.zarr"
    ingest(train, store, IngestConfig(preprocess=PreprocessConfig()))
    ingest(test, test_store, IngestConfig(preprocess=PreprocessConfig()))
    with ImageStore.open(store) as s:
        stored_keys = " ".join(s.table.strings("group_key"))
    for a, b in ((store, test), (train, test_store)):  # the store on either side
        same = audit([a], test=b, config=CFG)["leakage"]["same_patient"]
        assert same["checked"] and same["patients"] == 1 and same["test_slices"] == 3, same
        assert same["shared"][0]["patient"] in stored_keys
    out = tmp_path / "report"
    res = CliRunner().invoke(main, ["audit", str(store), "--test", str(test), "--out", str(out)])
    assert res.exit_code & EXIT_LEAKAGE, res.output
    assert "1 patient(s) on both sides" in res.output
    report = (out / "audit.json").read_text() + (out / "audit.md").read_text() + res.output
    for secret in ("Doe", "Jane", "FAKE", "Roe", "Poe"):
        assert secret not in report

    monkeypatch.setenv("MRISCAN_KEY_FILE", str(tmp_path / "other.key"))
    assert audit_key([store, test])[1] == AUDIT_KEY  # no key file: none is made
    assert not (tmp_path / "other.key").exists()
    identifier_key()  # another key
    assert audit_key([store, test])[1] == AUDIT_KEY
    same = audit([store], test=test, config=CFG)["leakage"]["same_patient"]
    assert not same["checked"] and "different keys" in same["why_not"]
    assert "a store made with your identifier key" in same["why_not"]
    res = CliRunner().invoke(
        main, ["audit", str(store), "--test", str(test), "--out", str(tmp_path / "r2")]
    )
    assert "cannot check for patients on both sides" in res.output
