"""The ONNX export (issue 20): same probabilities as Keras, refused when stale or unsupported."""

from __future__ import annotations

import numpy as np
import pytest

from mriscan.artifacts import ModelCard
from mriscan.model import build_model
from mriscan.preprocess import PreprocessConfig

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

pytestmark = pytest.mark.backend


def _randomise_batch_norm(model, seed=1):
    """Non-trivial inference statistics, so that folding them into the convolution matters."""
    import keras

    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            g, b, mu, var = layer.get_weights()
            layer.set_weights(
                [
                    g * rng.uniform(0.5, 1.5, g.shape),
                    b + rng.normal(0, 0.2, b.shape),
                    rng.normal(0, 0.2, mu.shape),
                    var * rng.uniform(0.5, 1.5, var.shape),
                ]
            )


def _save(model, path, classes=("no", "yes")):
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    size = int(model.input_shape[1])
    threshold = 0.5 if len(classes) == 2 else None
    card = ModelCard(
        preprocess=PreprocessConfig(size=size), class_names=classes, threshold=threshold
    )
    card.save(path)
    return path


@pytest.mark.parametrize(
    ("classes", "overrides"),
    [
        (2, {}),
        (3, {"mirror": False, "convs_per_block": 2}),
        (2, {"batch_norm": False, "augment": False, "block_dropout": 0.1}),
    ],
)
def test_export_gives_the_keras_probabilities(tmp_path, classes, overrides):
    import keras

    from mriscan.inference import predict_batch
    from mriscan.model import load_model
    from mriscan.onnx_engine import OnnxModel, export_onnx

    keras.utils.set_random_seed(0)  # the weights, so the spread checked below is reproducible
    names = ("no", "yes") if classes == 2 else ("a", "b", "c")
    keras_model = build_model(32, filters=(4, 8, 8, 16), num_classes=classes, seed=0, **overrides)
    _randomise_batch_norm(keras_model)
    path = _save(keras_model, tmp_path / "m" / "model.keras", names)
    out = export_onnx(path)
    assert out == path.with_suffix(".onnx") and out.is_file()
    model, _ = load_model(path)
    onnx_model = OnnxModel(path)
    assert onnx_model.input_shape == model.input_shape
    assert onnx_model.output_shape == model.output_shape
    x = np.random.default_rng(2).standard_normal((13, 32, 32, 1)).astype(np.float32)
    x[:, :, :10] += 1.5  # asymmetric slices: the mirror channel and the TTA matter
    for tta in (False, True):
        want = predict_batch(model, x, 8, tta=tta)
        got = predict_batch(onnx_model, x, 8, tta=tta)
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)
        assert np.ptp(want, axis=0).max() > 1e-3  # the slices get different probabilities


def test_a_stale_or_missing_export_is_refused(tmp_path):
    from mriscan.onnx_engine import OnnxExportError, OnnxModel, export_onnx

    path = _save(build_model(32, filters=(4, 4, 4, 4), seed=0), tmp_path / "model.keras")
    with pytest.raises(OnnxExportError, match=r"No ONNX export at .*model\.onnx.*export-onnx"):
        OnnxModel(path)
    export_onnx(path)
    _save(build_model(32, filters=(4, 4, 4, 4), seed=5), path)  # retrained in place
    with pytest.raises(OnnxExportError, match="exported from another model file"):
        OnnxModel(path)


def test_an_unsupported_layer_is_named(tmp_path):
    import keras

    from mriscan.onnx_engine import OnnxExportError, export_onnx

    inputs = keras.Input((32, 32, 1))
    x = keras.layers.Conv2D(4, 3, strides=2, name="strided")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(1, activation="sigmoid")(x)
    path = _save(keras.Model(inputs, outputs), tmp_path / "odd.keras")
    with pytest.raises(OnnxExportError, match="strided"):
        export_onnx(path)
    assert not path.with_suffix(".onnx").exists()


def test_predict_with_the_onnx_engine_matches_keras_without_importing_tensorflow(
    tmp_path, class_folder
):
    import json
    import subprocess
    import sys

    from click.testing import CliRunner

    from mriscan.cli import main
    from mriscan.onnx_engine import OnnxExportError
    from mriscan.predict import predict

    model = build_model(32, filters=(4, 8, 8, 16), seed=0)
    _randomise_batch_norm(model)
    path = _save(model, tmp_path / "m" / "model.keras")
    with pytest.raises(OnnxExportError, match="No ONNX export"):
        predict(path, [class_folder], engine="onnx")
    keras_rows = predict(path, [class_folder], engine="auto")  # no export yet: keras
    r = CliRunner().invoke(main, ["export-onnx", str(path)])
    assert r.exit_code == 0 and "model.onnx" in r.output, r.output
    code = (
        "import sys, json; from mriscan.predict import predict; "
        f"rows = predict({str(path)!r}, [{str(class_folder)!r}]); "
        "print(json.dumps([rows, 'tensorflow' in sys.modules, 'keras' in sys.modules]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    onnx_rows, tf_loaded, keras_loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert not tf_loaded and not keras_loaded  # auto picked the export
    assert [r["path"] for r in onnx_rows] == [r["path"] for r in keras_rows]
    np.testing.assert_allclose(
        [r["probability"] for r in onnx_rows], [r["probability"] for r in keras_rows], atol=2e-5
    )
    assert [r["label"] for r in onnx_rows] == [r["label"] for r in keras_rows]
