"""Starting from a user's weights file (``--init-weights``): matching by layer name and shape,
clear refusals, and its record in the run's identity, model card and protocol."""

from __future__ import annotations

import json
import zipfile

import h5py
import numpy as np
import pytest

from mriscan.errors import InitWeightsError, MriscanError
from mriscan.weights import load_matching_weights, read_layer_weights
from tests.conftest import build_class_store, fast_config

SMALL = {"filters": (4, 4, 8, 8), "dense_units": 8}


def _model(k: int = 2, seed: int = 0, **changes):
    from mriscan.model import build_model

    return build_model(32, num_classes=k, seed=seed, **{**SMALL, **changes})


def _values(model) -> dict[str, list[np.ndarray]]:
    return {
        layer.name: [np.array(w) for w in layer.get_weights()]
        for layer in model.layers
        if layer.weights
    }


def _randomise(model, seed: int) -> None:
    """Give every variable distinctive values (fresh BatchNorm statistics are all 0 / 1)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if layer.weights:
            layer.set_weights([rng.normal(size=w.shape).astype("float32") for w in layer.weights])


@pytest.fixture
def two_class_file(tmp_path):
    """A ``.weights.h5`` of a two-class model, and that model's values by layer."""
    source = _model(2, seed=1)
    _randomise(source, 1)
    path = tmp_path / "two_class.weights.h5"
    source.save_weights(path)
    return path, _values(source)


def test_a_two_class_file_starts_a_four_class_model_without_its_head(two_class_file):
    path, saved = two_class_file
    model = _model(4, seed=2)
    initial = _values(model)
    report = load_matching_weights(model, path)
    after = _values(model)
    body = [n for n in after if n != "class_prob"]
    for name in body:  # every body layer holds exactly the file's values
        for got, want in zip(after[name], saved[name], strict=True):
            np.testing.assert_array_equal(got, want)
    for got, want in zip(after["class_prob"], initial["class_prob"], strict=True):
        np.testing.assert_array_equal(got, want)  # the 4-class head keeps its initial values
    assert report.loaded == tuple(body)
    assert report.head_skipped == "class_prob" and report.kept_initial == ("class_prob",)
    assert report.model_layers == len(after) and report.file_format == "keras3-h5"
    d = report.to_dict()
    assert d["layers_loaded"] == len(body) == d["layers_with_weights"] - 1
    assert "not loaded" in report.describe() and str(path) in report.describe()


def test_a_file_of_the_same_task_loads_every_layer_head_included(two_class_file):
    path, saved = two_class_file
    model = _model(2, seed=3)
    report = load_matching_weights(model, path)
    assert report.head_skipped is None and report.kept_initial == ()
    assert len(report.loaded) == report.model_layers == len(saved)
    for name, arrays in _values(model).items():
        for got, want in zip(arrays, saved[name], strict=True):
            np.testing.assert_array_equal(got, want)


def test_a_keras_model_file_and_a_keras2_h5_file_are_read(tmp_path):
    source = _model(3, seed=4)
    _randomise(source, 4)
    source.save(tmp_path / "three.keras")
    saved = _values(source)
    model = _model(3, seed=5)
    report = load_matching_weights(model, tmp_path / "three.keras")
    assert report.file_format == "keras-zip" and report.head_skipped is None
    got = model.get_layer("block2_conv1").get_weights()[0]
    np.testing.assert_array_equal(got, saved["block2_conv1"][0])
    # a Keras 2 HDF5 weights file (the keras.applications download layout), made by hand
    legacy = tmp_path / "legacy.h5"
    kernel = np.arange(3 * 3 * 2 * 4, dtype=np.float32).reshape(3, 3, 2, 4)
    with h5py.File(legacy, "w") as f:
        f.attrs["layer_names"] = [b"block1_conv1", b"flatten"]
        g = f.create_group("block1_conv1")
        g.attrs["weight_names"] = [b"block1_conv1/kernel:0"]
        g.create_dataset("block1_conv1/kernel:0", data=kernel)
        f.create_group("flatten").attrs["weight_names"] = []
    fmt, layers = read_layer_weights(legacy)
    assert fmt == "keras2-h5" and list(layers) == ["block1_conv1"]
    report = load_matching_weights(model, legacy)
    assert report.loaded == ("block1_conv1",)
    np.testing.assert_array_equal(model.get_layer("block1_conv1").get_weights()[0], kernel)


@pytest.mark.parametrize(
    "damage",
    ["missing", "folder", "truncated", "not_hdf5", "zip_without_weights", "empty_h5"],
)
def test_a_missing_or_damaged_file_is_refused_naming_it(two_class_file, tmp_path, damage):
    path, _ = two_class_file
    bad = tmp_path / f"bad_{damage}.weights.h5"
    if damage == "folder":
        bad.mkdir()
    elif damage == "truncated":
        bad.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "not_hdf5":
        bad.write_text("<html>404 Not Found</html>")
    elif damage == "zip_without_weights":
        with zipfile.ZipFile(bad, "w") as zf:
            zf.writestr("config.json", "{}")
    elif damage == "empty_h5":
        h5py.File(bad, "w").close()
    model = _model(2)
    before = _values(model)
    with pytest.raises(InitWeightsError) as info:
        load_matching_weights(model, bad)
    message = str(info.value)
    assert str(bad) in message and "--init-weights" in message
    expected = {
        "missing": "does not exist",
        "folder": "is a folder",
        "truncated": "cannot be read",
        "not_hdf5": "cannot be read",
        "zip_without_weights": "holds no model.weights.h5",
        "empty_h5": "holds no layer with weights",
    }[damage]
    assert expected in message
    assert isinstance(info.value, MriscanError)
    for name, arrays in _values(model).items():  # nothing was changed
        for got, want in zip(arrays, before[name], strict=True):
            np.testing.assert_array_equal(got, want)


def test_a_file_of_another_architecture_is_refused(tmp_path):
    import keras

    other = keras.Sequential(
        [keras.Input((10,)), keras.layers.Dense(4, name="features"), keras.layers.Dense(1)]
    )
    path = tmp_path / "other.weights.h5"
    other.save_weights(path)
    with pytest.raises(InitWeightsError, match="none of its 2 layers with weights") as info:
        load_matching_weights(_model(2), path)
    assert "features" in str(info.value) and "block1_conv1" in str(info.value)


def test_same_names_with_other_shapes_are_refused_and_nothing_is_loaded(tmp_path):
    source = _model(2, mirror=False)  # block1_conv1 sees 1 channel instead of 2
    path = tmp_path / "no_mirror.weights.h5"
    source.save_weights(path)
    model = _model(2)
    before = _values(model)
    with pytest.raises(InitWeightsError, match="other shapes") as info:
        load_matching_weights(model, path)
    assert "block1_conv1: file [(3, 3, 1, 4)], model [(3, 3, 2, 4)]" in str(info.value)
    after = _values(model)
    np.testing.assert_array_equal(after["block2_conv1"][0], before["block2_conv1"][0])


def test_config_and_card_hold_the_setting(tmp_path):
    from pathlib import Path

    from mriscan.artifacts import ModelCard, ModelCardError
    from mriscan.config import FitConfig, TrainConfig, config_from_dict
    from mriscan.errors import ConfigError
    from mriscan.preprocess import PreprocessConfig

    assert FitConfig(init_weights=Path("w.weights.h5")).init_weights == "w.weights.h5"
    with pytest.raises(ConfigError, match="init_weights must be"):
        FitConfig(init_weights="  ")
    cfg = fast_config(**{"fit.init_weights": "w.weights.h5"})
    assert config_from_dict(TrainConfig, cfg.to_dict()) == cfg
    card = ModelCard(PreprocessConfig(size=32), ("no", "yes"), 0.5, init_weights={"layers": 3})
    assert ModelCard.from_dict(card.to_dict()).init_weights == {"layers": 3}
    with pytest.raises(ModelCardError, match="init_weights must be"):
        ModelCard(PreprocessConfig(size=32), ("no", "yes"), 0.5, init_weights="x")


@pytest.mark.backend
def test_training_from_a_file_replaces_the_phantoms_and_is_recorded(tmp_path, monkeypatch):
    import mriscan.training.pretrain as pretrain_mod
    from mriscan.artifacts import ModelCard
    from mriscan.model import build_model
    from mriscan.readers import file_sha256
    from mriscan.store import ImageStore
    from mriscan.training.fit import run_fingerprint, run_identity
    from mriscan.training.workflow import train

    names = ["notumor", "glioma", "meningioma", "pit"]
    store = build_class_store(tmp_path / "four.zarr", names, n_per_class=12)
    cfg = fast_config(**{"fit.epochs": 1, "pretrain.phantoms": 40})
    source = build_model(32, cfg.model, num_classes=2, seed=9)  # a two-class model's weights
    path = tmp_path / "mine.weights.h5"
    source.save_weights(path)
    cfg = fast_config(**{"fit.epochs": 1, "pretrain.phantoms": 40, "fit.init_weights": path})

    def no_phantoms(*a, **k):
        raise AssertionError("phantom pre-training ran although a weights file was given")

    monkeypatch.setattr(pretrain_mod, "pretrain_on_phantoms", no_phantoms)
    result = train(store, cfg, out=tmp_path / "run")
    card = ModelCard.load(result.model_path)
    start = card.init_weights
    assert start["source"] == "file" and start["path"] == str(path)
    assert start["sha256"] == file_sha256(path)
    assert start["head_skipped"] == "class_prob"
    assert start["layers_loaded"] == start["layers_with_weights"] - 1 == 9  # 4 conv, 4 BN, dense
    protocol = result.metrics["protocol"]
    assert protocol["pretrain_phantoms"] == 0 and protocol["init_weights"] == str(path)
    assert "started from the weights file" in protocol["description"]
    assert result.metrics["init_weights"] == start
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["init_weights"] == start

    # the file's content (not only its name) is part of the run's identity (resume check)
    with ImageStore.open(store) as st:
        idx = np.arange(8)
        before = run_fingerprint(run_identity(st, idx, idx, cfg, path))
        build_model(32, cfg.model, num_classes=2, seed=10).save_weights(path)
        assert run_fingerprint(run_identity(st, idx, idx, cfg, path)) != before


def test_a_missing_file_stops_training_before_it_starts(small_store, tmp_path):
    from mriscan.training.workflow import train

    cfg = fast_config(**{"fit.init_weights": str(tmp_path / "nowhere.weights.h5")})
    with pytest.raises(InitWeightsError, match=r"nowhere\.weights\.h5 does not exist"):
        train(small_store, cfg, out=tmp_path / "run")
    assert not (tmp_path / "run" / "models").exists()


def test_the_cli_option_reaches_the_config_and_a_damaged_file_is_one_line(small_store, tmp_path):
    from click.testing import CliRunner

    from mriscan.cli import main

    bad = tmp_path / "partial.weights.h5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n partial download")
    args = ["train", str(small_store), "--out", str(tmp_path / "run"), "--image-size", "32"]
    r = CliRunner().invoke(main, [*args, "--epochs", "1", "--init-weights", str(bad)])
    assert r.exit_code == 1
    assert f"Error: Starting weights {bad} cannot be read" in r.output
    assert "Traceback" not in r.output
