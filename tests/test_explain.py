"""Grad-CAM sanity: when the label is a bright blob at a known place, the heatmap peaks there."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from mriscan.errors import ConfigError
from mriscan.explain import class_activation_map, grad_cam, layer_cam, save_overlay
from mriscan.model import build_model

pytestmark = pytest.mark.backend


def _blob_task(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 0.5, (n, 32, 32, 1)).astype(np.float32)
    y = (np.arange(n) % 2).astype(np.float32)
    x[y == 1, 4:12, 4:12, 0] += 3.0  # the evidence: top-left
    return x, y


@pytest.fixture(scope="module")
def blob_model():
    """A small CNN trained until its evidence is the blob, with 20 held-out blob images."""
    keras.utils.set_random_seed(0)
    x, y = _blob_task(256)
    model = build_model(
        32, filters=(8, 16, 16, 16), dropout=0.0, augment=False, dense_units=16, mirror=False
    )
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3), loss="binary_crossentropy", metrics=["accuracy"]
    )
    model.fit(x, y, batch_size=32, epochs=6, verbose=0)
    xt, yt = _blob_task(40, seed=1)
    acc = float(np.mean((np.asarray(model.predict(xt, verbose=0)).ravel() > 0.5) == yt))
    assert acc > 0.9  # the model learned the task, so its evidence is the blob
    return model, xt[yt == 1]


def test_heatmap_peaks_on_the_blob(tmp_path, blob_model):
    model, blobs = blob_model
    cams = grad_cam(model, blobs)
    assert cams.shape == (20, 32, 32) and cams.max() <= 1.0 and cams.min() >= 0.0
    peaks = [np.unravel_index(np.argmax(c), c.shape) for c in cams]
    on_blob = [py < 16 and px < 16 for py, px in peaks]
    assert np.mean(on_blob) >= 0.8, peaks
    png = save_overlay(blobs[0, ..., 0], cams[0], tmp_path / "cam.png", title="blob")
    assert png.stat().st_size > 1000


def test_layer_cam_peaks_inside_the_blob_itself(blob_model):
    """LayerCAM fuses the finer maps of shallower blocks, so its peak lands on the 8×8 blob
    (rows/cols 4-11) and nearer its centre than the peak of the last block's 4×4 Grad-CAM."""
    model, blobs = blob_model
    cams = layer_cam(model, blobs)
    assert cams.shape == (20, 32, 32) and cams.max() == pytest.approx(1.0)
    assert cams.min() >= 0.0
    peaks = np.array([np.unravel_index(np.argmax(c), c.shape) for c in cams])
    inside = np.all((peaks >= 2) & (peaks <= 13), axis=1)  # the blob, ±2 px
    assert np.mean(inside) >= 0.8, peaks
    coarse = np.array([np.unravel_index(np.argmax(c), c.shape) for c in grad_cam(model, blobs)])
    centre = np.array([7.5, 7.5])
    offset = np.linalg.norm(peaks - centre, axis=1).mean()
    assert offset < np.linalg.norm(coarse - centre, axis=1).mean(), (peaks, coarse)
    # the dispatcher gives the same maps; an unknown method is refused by name
    np.testing.assert_allclose(class_activation_map(model, blobs[:4]), cams[:4], atol=1e-5)
    with pytest.raises(ConfigError, match="gradcam"):
        class_activation_map(model, blobs[:1], method="saliency")
    with pytest.raises(ConfigError, match="at least one layer"):
        layer_cam(model, blobs[:1], layer_names=[])


# --- issue 19 item 12: explain's inputs and outputs ---------------------------------------------


@pytest.fixture
def model_file(tmp_path):
    from mriscan.artifacts import ModelCard
    from mriscan.preprocess import PreprocessConfig

    path = tmp_path / "m" / "best_model.keras"
    path.parent.mkdir()
    build_model(32, filters=(8, 8, 8, 8)).save(path)
    ModelCard(preprocess=PreprocessConfig(size=32), class_names=("no", "yes"), threshold=0.5).save(
        path
    )
    return path


def _slice_file(path):
    from PIL import Image

    from tests.conftest import make_slice

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(make_slice(np.random.default_rng(len(str(path))), 48, 40)).save(path)
    return path


def test_heatmap_names_are_distinct_and_follow_the_relative_path(tmp_path):
    from mriscan.explain import heatmap_names

    assert heatmap_names([tmp_path / "a/slice_1.jpg", tmp_path / "b/slice_1.jpg"]) == [
        "a__slice_1_gradcam.png",
        "b__slice_1_gradcam.png",
    ]
    assert heatmap_names([tmp_path / "x/slice_1.jpg"]) == ["slice_1_gradcam.png"]
    names = heatmap_names(
        [tmp_path / p for p in ("x/s.jpg", "x/s.png", "x/S.JPG", "x/s.jpg", "x/y/s.jpg")]
    )
    assert names[0] == names[3]  # the same file twice: one name
    assert len({n.casefold() for n in names}) == 4  # distinct files: distinct names
    assert names[4] == "y__s_gradcam.png"


def test_explain_writes_one_png_per_file_even_with_equal_names(model_file, tmp_path):
    import os

    from mriscan.explain import explain

    images = [_slice_file(tmp_path / "in" / d / "slice_1.jpg") for d in ("a", "b")]
    odd = _slice_file(tmp_path / "in" / "c" / "x.png")
    try:
        odd = odd.rename(odd.with_name(os.fsdecode(b"scan_\xff.png")))
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system does not take non-UTF-8 names")
    out = tmp_path / "cam"
    results = explain(model_file, [*images, odd], out=out)
    assert [r["error"] for r in results] == ["", "", ""]
    pngs = sorted(p.name for p in out.iterdir())
    assert pngs == ["a__slice_1_gradcam.png", "b__slice_1_gradcam.png", "c__scan__xff_gradcam.png"]
    assert results[2]["path"].endswith("scan_\\xff.png")  # printable, valid UTF-8


def test_explain_cli_without_images_or_readable_images_exits_1(model_file, tmp_path):
    from click.testing import CliRunner

    from mriscan.cli import main

    (tmp_path / ".cache" / "empty").mkdir(parents=True)
    r = CliRunner().invoke(main, ["explain", str(model_file), str(tmp_path / ".cache" / "empty")])
    assert r.exit_code == 1 and "No image to explain" in r.output
    bad = tmp_path / ".cache" / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    r = CliRunner().invoke(main, ["explain", str(model_file), str(bad), "--out", str(tmp_path)])
    assert r.exit_code == 1 and "None of the 1 image(s) could be read" in r.output
    assert "bad.png" in r.output


def _three_class_task(n: int, seed: int = 0):
    """Class 0: no blob; class 1: a blob top-left; class 2: a blob bottom-right."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 0.5, (n, 32, 32, 1)).astype(np.float32)
    y = np.arange(n) % 3
    x[y == 1, 4:12, 4:12, 0] += 3.0
    x[y == 2, 20:28, 20:28, 0] += 3.0
    return x, y


@pytest.fixture(scope="module")
def three_class_model():
    keras.utils.set_random_seed(0)
    x, y = _three_class_task(300)
    model = build_model(
        32,
        num_classes=3,
        filters=(8, 16, 16, 16),
        dropout=0.0,
        augment=False,
        dense_units=16,
        mirror=False,
    )
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="categorical_crossentropy")
    model.fit(x, np.eye(3)[y], batch_size=32, epochs=8, verbose=0)
    return model


@pytest.mark.parametrize("cam_fn", [grad_cam, layer_cam], ids=["gradcam", "layercam"])
def test_k_class_heatmaps_follow_the_chosen_class(three_class_model, cam_fn):
    """The map of class k depends on class k's score only: changing the output weights of the
    other classes leaves it unchanged, changing class k's changes it."""
    xt, yt = _three_class_task(60, seed=1)
    pred = np.asarray(three_class_model.predict(xt, verbose=0)).argmax(axis=1)
    assert np.mean(pred == yt) > 0.9  # the model learned the task
    x = xt[yt == 1][:8]
    head = three_class_model.layers[-1]
    kernel, bias = (np.array(w) for w in head.get_weights())
    before = cam_fn(three_class_model, x, class_index=1)
    try:
        other = kernel.copy()
        other[:, [0, 2]] = np.random.default_rng(0).normal(size=(kernel.shape[0], 2))
        head.set_weights([other, bias])
        np.testing.assert_allclose(cam_fn(three_class_model, x, class_index=1), before, atol=1e-5)
        mine = kernel.copy()
        mine[:, 1] = -mine[:, 1]
        head.set_weights([mine, bias])
        assert not np.allclose(cam_fn(three_class_model, x, class_index=1), before, atol=1e-3)
    finally:
        head.set_weights([kernel, bias])
    # by default each slice is explained for its predicted class
    np.testing.assert_allclose(cam_fn(three_class_model, x), before, atol=1e-5)


def test_pointing_game_counts_hits_inside_the_boxes(three_class_model, tmp_path):
    from PIL import Image

    from mriscan.artifacts import ModelCard
    from mriscan.explain import pointing_game, read_boxes
    from mriscan.preprocess import PreprocessConfig

    path = tmp_path / "m.keras"
    three_class_model.save(path)
    pre = PreprocessConfig(size=32, crop=False, align=False, normalization="none")
    ModelCard(pre, ("none", "left", "right"), None, healthy="none").save(path)
    xt, yt = _three_class_task(30, seed=2)
    rows = ["file,class,x_center,y_center,width,height"]
    for i, (img, cls) in enumerate(zip(xt[..., 0], yt, strict=True)):
        if cls == 0:
            continue
        name = ["none", "left", "right"][cls]
        # the network saw float inputs; the files hold them shifted to uint8 (normalization
        # "none" gives them back as 0..255 values: scale the test task accordingly)
        u8 = np.clip(img * 40 + 100, 0, 255).astype(np.uint8)
        (tmp_path / "data" / name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(u8).save(tmp_path / "data" / name / f"{i}.png")
        c = 8 / 32 if cls == 1 else 24 / 32
        rows.append(f"{name}/{i}.png,{name},{c},{c},0.3,0.3")
    (tmp_path / "data" / "left" / "broken.png").write_bytes(b"not a png")
    rows.append("left/broken.png,left,0.5,0.5,0.1,0.1")
    (tmp_path / "boxes.csv").write_text("\n".join(rows) + "\n")
    assert len(read_boxes(tmp_path / "boxes.csv")) == 21
    result = pointing_game(path, tmp_path / "data", tmp_path / "boxes.csv", batch_size=8)
    assert result["unreadable"] and result["unreadable"][0][0] == "left/broken.png"
    total = result["overall"]
    assert total["n"] == 20 and total["hits"] <= total["correct"] <= total["n"]
    for name in ("left", "right"):
        s = result["per_class"][name]
        assert s["n"] == 10 and 0 <= s["hits"] <= s["correct"]
    # the map method changes only where the peak is, not which slices count
    coarse = pointing_game(
        path, tmp_path / "data", tmp_path / "boxes.csv", batch_size=8, method="gradcam"
    )
    assert (result["method"], coarse["method"]) == ("layercam", "gradcam")
    assert coarse["overall"]["correct"] == total["correct"]
    (tmp_path / "bad.csv").write_text("file,class,x_center\nx.png,left,0.5\n")
    from mriscan.errors import MriscanError

    with pytest.raises(MriscanError, match="must have the columns"):
        read_boxes(tmp_path / "bad.csv")


def test_nifti_slices_are_numbered_by_the_volume_s_own_index(model_file, tmp_path):
    """Blank slices 0-2 are not read (too little brain): slice 3 of the volume is called slice
    3 (not 0) in the row, the PNG name and --slices, as in its source nifti/<id>#3."""
    from mriscan.explain import explain
    from mriscan.synth_scanner import phantom_volume, stack_to_ras, write_nifti

    stack = phantom_volume(2, n_slices=6, canvas=32)
    padded = np.concatenate([np.zeros_like(stack[:3]), stack])  # volume slices 3..8 hold brain
    vol = write_nifti(tmp_path / "Roe_Richard.nii.gz", stack_to_ras(padded))
    res = explain(model_file, [vol], out=tmp_path / "x", slices=[3, 8, 1])
    made = [r for r in res if not r["error"]]
    assert [r["path"].split("#")[1] for r in made] == ["3 (slice 3)", "8 (slice 8)"]
    assert sorted(p.name.split("_slice")[1] for p in (tmp_path / "x").iterdir()) == [
        "3_gradcam.png",
        "8_gradcam.png",
    ]
    (missing,) = [r for r in res if r["error"]]
    assert "no slice 1 among the volume's slices that are read (indices 3-8" in missing["error"]
    top = explain(model_file, [vol], out=tmp_path / "y", top_k=2)
    for r in top:  # the number shown is the source's index
        index = r["path"].split("#")[1].split(" ")[0]
        assert r["path"].endswith(f"(slice {index})") and 3 <= int(index) <= 8
