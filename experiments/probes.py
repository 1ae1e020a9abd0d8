"""Probes of a trained model that need no retraining (experiments/ACCURACY.md rows 49-50).

Usage (from the repository root)::

    python experiments/probes.py texture MODEL DATA [--per-class N]
    python experiments/probes.py cam-layers MODEL FOLDER BOXES_CSV [--limit N]

``texture``: preprocesses about ``N`` slices of each class folder of ``DATA`` (evenly spaced
in name order), changes their texture or intensities (Gaussian blur, unsharp
masking, added noise, gamma, head inversion), and prints, per change and class folder, the share
the model calls a tumor (any class but the model's healthy one; for a two-class model its
positive class). A change that moves these shares a lot while a radiologist would not change
the call is a shortcut the model uses.

``cam-layers``: the pointing game (``mriscan.pointing.pointing_game``'s rule: peak inside the
box, correctly classified tumor slices) for Grad-CAM and LayerCAM of every conv block and for
LayerCAM fused over adjacent blocks, to choose ``explain``'s default map.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import ndimage

from mriscan.explain import block_outputs, grad_cam, layer_cam
from mriscan.inference import predict_batch
from mriscan.io import decode_image
from mriscan.model import load_model
from mriscan.pointing import peak_in_any_box, pointing_target, read_boxes
from mriscan.preprocess import normalize, preprocess

Change = Callable[[np.ndarray], np.ndarray]


def _u8(a: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def _blur(sigma: float) -> Change:
    return lambda a: _u8(ndimage.gaussian_filter(a.astype(np.float32), sigma))


def _sharpen(a: np.ndarray) -> np.ndarray:
    b = a.astype(np.float32)
    return _u8(b + 1.5 * (b - ndimage.gaussian_filter(b, 1.0)))


def _noise(a: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(0)
    out = a.astype(np.float32)
    head = a > 10
    out[head] += rng.normal(0.0, 8.0, int(head.sum()))
    return _u8(out)


def _gamma(g: float) -> Change:
    return lambda a: _u8(255.0 * (a / 255.0) ** g)


def _invert(a: np.ndarray) -> np.ndarray:
    head = a > 0.1 * np.percentile(a, 99)
    out = a.copy()
    out[head] = 255 - a[head]
    return out


CHANGES: dict[str, Change] = {
    "as is": lambda a: a,
    "blur 0.7 px": _blur(0.7),
    "blur 1 px": _blur(1.0),
    "sharpen": _sharpen,
    "noise 8 grey levels": _noise,
    "gamma 0.6": _gamma(0.6),
    "gamma 1.6": _gamma(1.6),
    "head inverted": _invert,
}


def texture(model_path: Path, data: Path, per_class: int) -> dict[str, dict[str, float]]:
    """Share of tumor calls per change and class folder (see the module docstring)."""
    model, card = load_model(model_path)
    cfg = card.preprocess
    sets = {}
    for folder in sorted(p for p in data.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(p for p in folder.iterdir() if p.is_file())
        step = max(1, len(files) // per_class)
        sets[folder.name] = np.stack([preprocess(decode_image(f), cfg) for f in files[::step]])
    out: dict[str, dict[str, float]] = {}
    for name, change in CHANGES.items():
        out[name] = {}
        for cls, arr in sets.items():
            x = np.stack([change(a) for a in arr])
            x = normalize(x, cfg.normalization, threshold=cfg.threshold)[..., None]
            calls = [card.decide(p) for p in predict_batch(model, x, 32, tta=card.tta)]
            tumor = [c == card.class_names[1] if card.binary else c != card.healthy for c in calls]
            out[name][cls] = float(np.mean(tumor))
        print(f"{name:>20}: " + ", ".join(f"{c} {v:.2f}" for c, v in out[name].items()))
    return out


def cam_layers(model_path: Path, root: Path, boxes_csv: Path, limit: int | None) -> dict:
    """Pointing game per map (see the module docstring)."""
    model, card = load_model(model_path)
    cfg = card.preprocess
    blocks = block_outputs(model)
    maps: dict[str, Callable] = {}
    for b in blocks:
        maps[f"gradcam {b}"] = lambda m, x, k, b=b: grad_cam(m, x, layer_name=b, class_index=k)
        maps[f"layercam {b}"] = lambda m, x, k, b=b: layer_cam(m, x, layer_names=[b], class_index=k)
    for i in range(len(blocks) - 2):
        for j in range(i + 2, len(blocks)):
            names = blocks[i:j]
            maps[f"layercam {'+'.join(names)}"] = lambda m, x, k, n=names: layer_cam(
                m, x, layer_names=n, class_index=k
            )
    items = sorted(read_boxes(boxes_csv).items())[:limit]
    hits: dict[str, dict[str, list[int]]] = {m: {} for m in maps}
    for start in range(0, len(items), 32):
        chunk = items[start : start + 32]
        imgs = [decode_image(root / rel) for rel, _ in chunk]
        x = normalize(
            np.stack([preprocess(i, cfg) for i in imgs]), cfg.normalization, threshold=cfg.threshold
        )[..., None]
        probs = predict_batch(model, x, 32, tta=card.tta)
        ks, ok = zip(
            *(pointing_target(card, box.cls, p) for (_, box), p in zip(chunk, probs, strict=True)),
            strict=True,
        )
        k = None if card.binary else np.array(ks)
        for name, fn in maps.items():
            for (_, box), img, cam, good in zip(chunk, imgs, fn(model, x, k), ok, strict=True):
                if not good:
                    continue
                inside = peak_in_any_box(img, cam, box.boxes, cfg)
                hits[name].setdefault(box.cls, []).append(int(inside))
        print(f"{min(start + 32, len(items))} of {len(items)}", flush=True)
    out = {}
    for name, per in hits.items():
        out[name] = {c: float(np.mean(v)) for c, v in per.items()}
        out[name]["all"] = float(np.mean([h for v in per.values() for h in v])) if per else None
        print(f"{name:>48}: " + ", ".join(f"{c} {v:.3f}" for c, v in out[name].items()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="probe", required=True)
    t = sub.add_parser("texture", help="tumor calls under texture and intensity changes")
    t.add_argument("model", type=Path)
    t.add_argument("data", type=Path, help="a folder of class folders")
    t.add_argument("--per-class", type=int, default=120)
    c = sub.add_parser("cam-layers", help="pointing game per map and layer")
    c.add_argument("model", type=Path)
    c.add_argument("folder", type=Path)
    c.add_argument("boxes", type=Path)
    c.add_argument("--limit", type=int, default=None)
    for p in (t, c):
        p.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args()
    if args.probe == "texture":
        result = texture(args.model, args.data, args.per_class)
    else:
        result = cam_layers(args.model, args.folder, args.boxes, args.limit)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
