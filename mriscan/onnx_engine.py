"""Prediction without TensorFlow: the classifier exported to ONNX and run by ONNX Runtime.

``export_onnx(X.keras)`` writes ``X.onnx`` beside the model (``mriscan export-onnx``);
``OnnxModel`` runs it with the interface ``mriscan.inference.predict_batch`` uses
(``predict_on_batch``), so prediction of files, DICOM and NIfTI is unchanged. Why: importing
TensorFlow and Keras costs ~4 s on an idle 2-core machine and 14 s on a loaded one, ONNX
Runtime 0.5 s. Per model pass ONNX Runtime is *slower* than TensorFlow here (about half, on its
best call size; ``bench/RESULTS.md``), so the export pays off where start-up dominates: a
``mriscan predict`` command on up to a few thousand files. The results equal Keras's up to
float rounding (``tests/test_onnx_engine.py``).

Why our own converter: ``keras2onnx`` was last released in 2020 (Keras 2); ``tf2onnx`` was not
tried (it converts the traced TensorFlow graph and adds its own version pins); Keras 3's
``model.export(format="onnx")`` goes through one of them. The model is a chain of a few
standard layers (``mriscan.model.build_model``) that map one to one onto ONNX operators
(opset 18), so the converter is ~100 lines checked by a parity test. Batch normalisation is
folded into the convolution before it (what Keras computes at inference). A layer without a
mapping is an ``OnnxExportError``.

This module imports neither Keras nor TensorFlow at import time; ``export_onnx`` does.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from mriscan.errors import MriscanError

__all__ = ["OnnxExportError", "OnnxModel", "export_onnx", "onnx_path"]

OPSET = 18
_SHA_KEY = "mriscan.keras_sha256"
# layers that are the identity at inference time
_IDENTITY = frozenset(
    {
        "InputLayer",
        "RandomFlip",
        "RandomRotation",
        "RandomZoom",
        "RandomTranslation",
        "RandomContrast",
        "Dropout",
        "SpatialDropout2D",
    }
)
_ACTIVATIONS = {"relu": "Relu", "sigmoid": "Sigmoid", "softmax": "Softmax", "linear": None}


class OnnxExportError(MriscanError, ValueError):
    """The model cannot be exported to ONNX, or an exported file does not match its model."""


def onnx_path(model_path: str | os.PathLike[str]) -> Path:
    """Where the ONNX export of ``X.keras`` lives: ``X.onnx`` beside it."""
    return Path(model_path).with_suffix(".onnx")


class _Graph:
    """Collects ONNX nodes and initialisers with fresh names."""

    def __init__(self) -> None:
        from onnx import numpy_helper

        self._numpy_helper = numpy_helper
        self.nodes: list = []
        self.inits: list = []
        self._count = 0

    def _name(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}_{self._count}"

    def const(self, value: np.ndarray, prefix: str = "w") -> str:
        name = self._name(prefix)
        self.inits.append(self._numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], **attrs: Any) -> str:
        from onnx import helper

        out = self._name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def flip_width(self, x: str) -> str:
        """``x`` (N, C, H, W) mirrored left-right."""
        i64 = np.int64
        return self.node(
            "Slice",
            [
                x,
                self.const(np.array([-1], i64), "start"),
                self.const(np.array([np.iinfo(i64).min], i64), "end"),
                self.const(np.array([3], i64), "axis"),
                self.const(np.array([-1], i64), "step"),
            ],
        )

    def activation(self, x: str, layer: Any) -> str:
        name = getattr(layer.activation, "__name__", str(layer.activation))
        if name not in _ACTIVATIONS:
            raise OnnxExportError(
                f"Layer {layer.name}: activation {name!r} has no ONNX mapping here "
                f"(supported: {', '.join(_ACTIVATIONS)})."
            )
        op = _ACTIVATIONS[name]
        if op is None:
            return x
        return self.node(op, [x], axis=-1) if op == "Softmax" else self.node(op, [x])


def _conv(g: _Graph, x: str, layer: Any, bn: Any | None) -> str:
    """A 'same'-padded stride-1 Conv2D, with the BatchNormalization after it folded in."""
    k = layer.kernel_size
    if (
        tuple(layer.strides) != (1, 1)
        or tuple(layer.dilation_rate) != (1, 1)
        or layer.padding not in ("same", "valid")
        or layer.data_format != "channels_last"
        or layer.groups != 1
        or (layer.padding == "same" and (k[0] % 2 == 0 or k[1] % 2 == 0))
    ):
        raise OnnxExportError(
            f"Layer {layer.name}: only stride-1, undilated, ungrouped channels_last Conv2D "
            "with odd kernels are exported."
        )
    w = np.asarray(layer.kernel.numpy(), np.float32).transpose(3, 2, 0, 1)  # (O, I, kh, kw)
    b = (
        np.zeros(w.shape[0], np.float32)
        if layer.bias is None
        else np.asarray(layer.bias.numpy(), np.float32)
    )
    if bn is not None:
        n = w.shape[0]
        gamma = np.ones(n) if bn.gamma is None else np.asarray(bn.gamma.numpy(), np.float64)
        beta = np.zeros(n) if bn.beta is None else np.asarray(bn.beta.numpy(), np.float64)
        mean = np.asarray(bn.moving_mean.numpy(), np.float64)
        var = np.asarray(bn.moving_variance.numpy(), np.float64)
        scale = gamma / np.sqrt(var + bn.epsilon)
        w = (w * scale[:, None, None, None]).astype(np.float32)
        b = ((b - mean) * scale + beta).astype(np.float32)
    pads = [k[0] // 2, k[1] // 2, k[0] // 2, k[1] // 2] if layer.padding == "same" else [0] * 4
    y = g.node("Conv", [x, g.const(w), g.const(b)], kernel_shape=list(k), pads=pads)
    return g.activation(y, layer)


def _convert(model: Any) -> Any:
    """The ONNX ModelProto of a Keras chain model (``mriscan.model.build_model``)."""
    from onnx import TensorProto, helper

    g = _Graph()
    shape = tuple(model.input_shape)
    if len(shape) != 4:
        raise OnnxExportError(f"Expected (batch, H, W, C) inputs. Received {shape}.")
    x = g.node("Transpose", ["slice"], perm=[0, 3, 1, 2])  # NHWC -> NCHW
    layers = list(model.layers)
    prev = None
    i = 0
    while i < len(layers):
        layer = layers[i]
        kind = type(layer).__name__
        if prev is not None and layer.input is not prev.output:
            raise OnnxExportError(
                f"Layer {layer.name} does not take the previous layer's output: only chains "
                "of layers are exported."
            )
        if kind in _IDENTITY:
            pass
        elif kind == "MirrorDifference":
            x = g.node("Concat", [x, g.node("Abs", [g.node("Sub", [x, g.flip_width(x)])])], axis=1)
        elif kind == "Conv2D":
            nxt = layers[i + 1] if i + 1 < len(layers) else None
            if type(nxt).__name__ == "BatchNormalization" and nxt.input is layer.output:
                if layer.activation.__name__ != "linear" or nxt.axis not in (-1, 3):
                    raise OnnxExportError(
                        f"Layer {nxt.name}: only a channel BatchNormalization right after a "
                        "linear Conv2D is exported."
                    )
                x = _conv(g, x, layer, nxt)
                layer = nxt  # consumed with the convolution
                i += 1
            else:
                x = _conv(g, x, layer, None)
        elif kind == "Activation":
            x = g.activation(x, layer)
        elif kind == "MaxPooling2D":
            if layer.padding != "valid":
                raise OnnxExportError(f"Layer {layer.name}: only 'valid' max pooling is exported.")
            x = g.node(
                "MaxPool", [x], kernel_shape=list(layer.pool_size), strides=list(layer.strides)
            )
        elif kind == "GlobalAveragePooling2D":
            if layer.keepdims:
                raise OnnxExportError(f"Layer {layer.name}: keepdims=True is not exported.")
            x = g.node("Flatten", [g.node("GlobalAveragePool", [x])])
        elif kind == "Dense":
            w = np.asarray(layer.kernel.numpy(), np.float32)
            b = np.zeros(w.shape[1], np.float32) if layer.bias is None else layer.bias.numpy()
            x = g.node("Gemm", [x, g.const(w), g.const(np.asarray(b, np.float32))])
            x = g.activation(x, layer)
        else:
            raise OnnxExportError(
                f"Layer {layer.name} ({kind}) has no ONNX mapping; models built by "
                "mriscan.model.build_model are exported."
            )
        prev = layer
        i += 1
    out_shape = tuple(model.output_shape)
    graph = helper.make_graph(
        g.nodes,
        model.name,
        [helper.make_tensor_value_info("slice", TensorProto.FLOAT, ["batch", *shape[1:]])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["batch", *out_shape[1:]])],
        g.inits,
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="mriscan"
    )


def export_onnx(model_path: str | os.PathLike[str]) -> Path:
    """Export the model ``X.keras`` (with its card) to ``X.onnx`` and return that path.

    The file is checked by ``onnx.checker``, written atomically (temporary file +
    ``os.replace``) and records the SHA-256 of ``X.keras``, so ``OnnxModel`` refuses an export
    of another model file.

    Raises
    ------
    MriscanError, ModelCardError
        As ``mriscan.model.load_model`` (no model file, bad card).
    OnnxExportError
        If a layer has no ONNX mapping (only ``build_model`` architectures are exported).
    """
    import onnx

    from mriscan.model import load_model
    from mriscan.readers import file_sha256

    model, _card = load_model(model_path)
    proto = _convert(model)
    onnx.helper.set_model_props(proto, {_SHA_KEY: file_sha256(model_path)})
    onnx.checker.check_model(proto)
    out = onnx_path(model_path)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_bytes(proto.SerializeToString())
    os.replace(tmp, out)
    return out


class OnnxModel:
    """An exported model run by ONNX Runtime on the CPU, with the Keras model's interface for
    prediction: ``predict_on_batch(x)`` on (N, S, S, C) float32 gives (N, 1) or (N, K)
    float32; ``input_shape`` and ``output_shape`` as Keras gives them.

    Parameters
    ----------
    model_path : path
        The ``X.keras`` file; ``X.onnx`` (``export_onnx``) is what runs.
    threads : int, optional
        ONNX Runtime's intra-op threads (default: its own, the number of cores).

    Raises
    ------
    OnnxExportError
        If ``X.onnx`` is missing, or was exported from another file than ``X.keras`` (the
        model was retrained or replaced since): run ``mriscan export-onnx X.keras`` again.
    """

    # Rows per call (``mriscan.inference.predict_batch``): ONNX Runtime, unlike TensorFlow, is
    # fastest on large calls here (default model, 128², img/s per pass: 8 rows 74, 32 rows 85,
    # 64 rows 101, 128 rows 94).
    call_rows = 64

    def __init__(self, model_path: str | os.PathLike[str], threads: int | None = None) -> None:
        import onnxruntime as ort

        from mriscan.readers import file_sha256

        self.path = onnx_path(model_path)
        if not self.path.is_file():
            raise OnnxExportError(
                f"No ONNX export at {self.path}: run `mriscan export-onnx {model_path}`, "
                "or predict with --engine keras."
            )
        opts = ort.SessionOptions()
        # no busy-waiting between calls: the threads that decode the next files need the cores
        # (in ``predict_files`` spinning cost 27 vs 37 img/s)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            opts.intra_op_num_threads = int(threads)
        self._session = ort.InferenceSession(
            str(self.path), opts, providers=["CPUExecutionProvider"]
        )
        meta = self._session.get_modelmeta().custom_metadata_map
        if meta.get(_SHA_KEY) != file_sha256(model_path):
            raise OnnxExportError(
                f"{self.path} was exported from another model file than {model_path} (the "
                f"model was retrained or replaced): run `mriscan export-onnx {model_path}` "
                "again, or delete it."
            )
        inp = self._session.get_inputs()[0]
        out = self._session.get_outputs()[0]
        self._input = inp.name
        self.input_shape = (None, *inp.shape[1:])
        self.output_shape = (None, *out.shape[1:])

    def predict_on_batch(self, x: np.ndarray) -> np.ndarray:
        """Outputs of the model for the batch ``x`` (N, S, S, C) float32."""
        return self._session.run(None, {self._input: np.ascontiguousarray(x, np.float32)})[0]
