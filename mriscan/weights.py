"""Starting a model from a weights file: read it, match its layers to the model's by name.

A user may start training from weights made elsewhere (``--init-weights FILE``, e.g. a
backbone downloaded by hand, or a model trained on another collection): every layer of the
model whose name and variable shapes equal a layer of the file takes that layer's values; the
others keep their initial values. The output layer may differ in shape (another number of
classes, or named otherwise: a two-class model's is ``tumor_prob``, a K-class one's
``class_prob``) and is then skipped; any other layer of the same name but other shapes is an error,
since it means the file was made with other model settings and a silent partial load would
train something else than the user believes.

Formats read (all with h5py, never by deserialising a model, so no code in the file runs):

- Keras 3 ``.weights.h5`` (``model.save_weights``): ``layers/<key>/vars/<i>``; the layer's
  name is the ``name`` attribute of ``vars`` (Keras 3.15 writes it; files of Keras releases
  that did not record it only have the class-based key such as ``conv2d_1``, used as the name);
- Keras 3 ``.keras`` (a zip holding ``model.weights.h5`` in the layout above);
- Keras 2 / ``tf.keras`` HDF5 weights (``.h5``, e.g. ``keras.applications`` downloads): the
  ``layer_names`` and ``weight_names`` attributes, at the root or under ``model_weights``.

Variables are compared and assigned in the order Keras saves them
(``Layer.save_own_variables`` / ``load_own_variables``), so a layer is written through
Keras's own code path.
"""

from __future__ import annotations

import io
import logging
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mriscan.errors import InitWeightsError

__all__ = ["WeightsReport", "load_matching_weights", "read_layer_weights"]

log = logging.getLogger(__name__)

_FIX_FILE = (
    "Give a .weights.h5 (model.save_weights), a .keras model or a Keras 2 .h5 weights file, "
    "or leave --init-weights out."
)


@dataclass(frozen=True)
class WeightsReport:
    """What ``load_matching_weights`` did.

    ``loaded``: names of the model's layers that took the file's values; ``kept_initial``:
    layers with weights that the file does not hold (they keep their initial values);
    ``head_skipped``: the model's output layer when it was not loaded (the file holds it with
    other shapes, or not at all: a model for another number of classes), else None;
    ``file_layers``: layers with weights in the file; ``model_layers``: layers with weights in
    the model; ``sha256``: of the file's bytes.
    """

    path: str
    sha256: str
    file_format: str
    loaded: tuple[str, ...]
    kept_initial: tuple[str, ...]
    head_skipped: str | None
    file_layers: int
    model_layers: int

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (as written into the model card and metrics)."""
        return {
            "path": self.path,
            "sha256": self.sha256,
            "file_format": self.file_format,
            "layers_loaded": len(self.loaded),
            "layers_with_weights": self.model_layers,
            "loaded": list(self.loaded),
            "kept_initial": list(self.kept_initial),
            "head_skipped": self.head_skipped,
            "file_layers": self.file_layers,
        }

    def describe(self) -> str:
        """One line: how many layers were loaded, and what was not."""
        text = (
            f"loaded {len(self.loaded)} of the model's {self.model_layers} layers with weights "
            f"from {self.path}"
        )
        if self.head_skipped:
            text += (
                f"; output layer {self.head_skipped} not loaded (the file's is for another "
                "number of classes, or absent): it starts from random weights"
            )
        others = [n for n in self.kept_initial if n != self.head_skipped]
        if others:
            text += f"; not in the file, left at their initial values: {', '.join(others)}"
        return text


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _array(ds: Any) -> np.ndarray:
    arr = np.asarray(ds[()])
    if ds.attrs.get("dtype") == "bfloat16":  # Keras 3 stores bfloat16 as its raw 16 bits
        import ml_dtypes

        arr = arr.view(ml_dtypes.bfloat16).astype(np.float32)
    return arr


def _keras3_layers(group: Any, out: dict[str, list[np.ndarray]], dup: set[str]) -> None:
    """Collect ``layers/<key>/vars/<i>`` (recursing into nested models' ``layers``)."""
    for key in group:
        entry = group[key]
        if not hasattr(entry, "keys"):
            continue
        if "vars" in entry:
            vars_ = entry["vars"]
            arrays = [_array(vars_[str(i)]) for i in range(len(vars_))]
            if arrays:
                name = _text(vars_.attrs.get("name", key))
                if name in out:
                    dup.add(name)
                out[name] = arrays
        if "layers" in entry:
            _keras3_layers(entry["layers"], out, dup)


def _legacy_layers(root: Any) -> dict[str, list[np.ndarray]]:
    """Keras 2 HDF5: ``layer_names`` → group → ``weight_names`` → datasets, in saving order."""
    out: dict[str, list[np.ndarray]] = {}
    for name in (_text(n) for n in root.attrs["layer_names"]):
        g = root[name]
        arrays = [_array(g[_text(w)]) for w in g.attrs.get("weight_names", [])]
        if arrays:
            out[name] = arrays
    return out


def read_layer_weights(path: str | os.PathLike[str]) -> tuple[str, dict[str, list[np.ndarray]]]:
    """The layers with weights in a Keras weights file, by layer name.

    Returns
    -------
    file_format : str
        ``"keras3-h5"``, ``"keras-zip"`` (a ``.keras`` model) or ``"keras2-h5"``.
    layers : dict
        Layer name → its variables as numpy arrays, in Keras's saving order (e.g. a
        Conv2D's kernel (kh, kw, c_in, c_out) then bias; a BatchNormalization's gamma, beta,
        moving mean, moving variance). Names that occur twice (nested models) are left out.

    Raises
    ------
    InitWeightsError
        If the file is missing, not a Keras weights file, damaged (truncated, not HDF5, a
        ``.keras`` zip without ``model.weights.h5``) or holds no layer with weights.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise InitWeightsError(f"Starting weights {path} {what}. {_FIX_FILE}")
    try:
        if zipfile.is_zipfile(path):
            fmt = "keras-zip"
            with zipfile.ZipFile(path) as zf:
                if "model.weights.h5" not in zf.namelist():
                    raise InitWeightsError(
                        f"Starting weights {path} is a zip file but holds no model.weights.h5, "
                        f"so it is no Keras 3 .keras model (it holds {zf.namelist()[:5]}). "
                        + _FIX_FILE
                    )
                h5 = h5py.File(io.BytesIO(zf.read("model.weights.h5")), "r")
        else:
            fmt = "keras3-h5"
            h5 = h5py.File(path, "r")
        with h5:
            dup: set[str] = set()
            layers: dict[str, list[np.ndarray]] = {}
            if "layer_names" in h5.attrs:
                fmt, layers = "keras2-h5", _legacy_layers(h5)
            elif "model_weights" in h5 and "layer_names" in h5["model_weights"].attrs:
                fmt, layers = "keras2-h5", _legacy_layers(h5["model_weights"])
            elif "layers" in h5:
                _keras3_layers(h5["layers"], layers, dup)
            for name in dup:
                log.warning("%s: layer name %s occurs twice; not loaded", path, name)
                del layers[name]
    except InitWeightsError:
        raise
    except (OSError, KeyError, ValueError, TypeError, zipfile.BadZipFile, zlib.error) as exc:
        raise InitWeightsError(
            f"Starting weights {path} cannot be read as a Keras weights file ({exc}): it is "
            "damaged (e.g. a partial download) or of another format. Save or download it "
            "again. " + _FIX_FILE
        ) from exc
    if not layers:
        raise InitWeightsError(
            f"Starting weights {path} holds no layer with weights (read as {fmt}). " + _FIX_FILE
        )
    return fmt, layers


def _shapes(arrays: list[Any]) -> list[tuple[int, ...]]:
    return [tuple(int(n) for n in a.shape) for a in arrays]


def load_matching_weights(model: Any, path: str | os.PathLike[str]) -> WeightsReport:
    """Load into ``model`` every layer of the weights file at ``path`` that matches one of its
    layers by name and variable shapes; the rest of the model keeps its current values.

    Parameters
    ----------
    model : keras.Model
        A built model (e.g. ``mriscan.build_model``); its last layer is the output layer.
    path : path
        A ``.weights.h5``, ``.keras`` or Keras 2 ``.h5`` file (see the module docstring).

    Returns
    -------
    WeightsReport

    Raises
    ------
    InitWeightsError
        If the file cannot be read (see ``read_layer_weights``); if a layer other than the
        output layer has the same name in the file but other variable shapes or counts (the
        file was made with other model settings; nothing is loaded then); or if no layer
        matches at all.
    """
    from mriscan.readers import file_sha256

    fmt, theirs = read_layer_weights(path)
    head = model.layers[-1].name
    plan: list[tuple[Any, list[np.ndarray]]] = []
    kept: list[str] = []
    conflicts: list[str] = []
    head_skipped = None
    n_model = 0
    for layer in model.layers:
        own: dict[str, Any] = {}
        layer.save_own_variables(own)
        if not own:
            continue
        n_model += 1
        mine = [own[str(i)] for i in range(len(own))]
        arrays = theirs.get(layer.name)
        if arrays is None:
            kept.append(layer.name)
            head_skipped = layer.name if layer.name == head else head_skipped
        elif _shapes(arrays) != _shapes(mine):
            if layer.name == head:
                head_skipped = layer.name
                kept.append(layer.name)
            else:
                conflicts.append(f"{layer.name}: file {_shapes(arrays)}, model {_shapes(mine)}")
        else:
            plan.append((layer, arrays))
    if conflicts:
        raise InitWeightsError(
            f"Starting weights {path}: {len(conflicts)} layer(s) have the model's names but "
            f"other shapes ({'; '.join(conflicts)}), so the file was made with other model "
            "settings (filters, --mirror, channels, image size of the first layers). Train "
            "with the settings the file was made with, or save it again from a model built "
            "with these settings. Nothing was loaded."
        )
    if not plan:
        mine_names = [layer.name for layer in model.layers if layer.weights]
        raise InitWeightsError(
            f"Starting weights {path}: none of its {len(theirs)} layers with weights "
            f"({', '.join(sorted(theirs)[:8])}{', …' if len(theirs) > 8 else ''}) matches a "
            f"layer of this model by name and shape (the model's: {', '.join(mine_names)}); "
            "it holds another architecture (or was saved by a Keras release that did not "
            "record layer names). Give weights saved from a model built by mriscan "
            "(model.save_weights or a trained .keras file), or leave --init-weights out."
        )
    for layer, arrays in plan:
        layer.load_own_variables({str(i): a for i, a in enumerate(arrays)})
    report = WeightsReport(
        path=str(path),
        sha256=file_sha256(path),
        file_format=fmt,
        loaded=tuple(layer.name for layer, _ in plan),
        kept_initial=tuple(kept),
        head_skipped=head_skipped,
        file_layers=len(theirs),
        model_layers=n_model,
    )
    log.info("starting weights: %s", report.describe())
    return report
