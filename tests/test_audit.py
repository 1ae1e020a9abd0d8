"""The audit on small synthetic sets that plant one problem each, a clean set, and the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from mriscan.audit import EXIT_CONFLICT, EXIT_LEAKAGE, AuditConfig, AuditError, audit
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
