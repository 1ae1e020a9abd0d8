"""``JsonHistory``: the Keras callback that keeps ``history.json`` current after every epoch."""

from __future__ import annotations

import json
from pathlib import Path

import keras

from mriscan.artifacts import write_json

__all__ = ["JsonHistory"]


class JsonHistory(keras.callbacks.Callback):
    """Writes ``{"epochs": [{"epoch": k, "loss": ..., ...}, ...]}`` after every epoch.

    On a resumed run (``resume=True``) the epochs already in the file are kept, so the file
    always covers the whole run. The file is replaced atomically.
    """

    def __init__(self, path: Path, resume: bool) -> None:
        super().__init__()
        self.path = path
        self.epochs: dict[int, dict[str, float]] = {}
        if resume and path.is_file():
            for rec in json.loads(path.read_text()).get("epochs", []):
                self.epochs[int(rec["epoch"])] = rec

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        rec = {"epoch": epoch, **{k: float(v) for k, v in (logs or {}).items()}}
        rec.pop("learning_rate", None)
        self.epochs[epoch] = rec
        write_json(self.path, {"epochs": [self.epochs[k] for k in sorted(self.epochs)]}, indent=1)

    def as_dict(self) -> dict[str, list[float]]:
        """History as metric name → list over epochs."""
        out: dict[str, list[float]] = {}
        for k in sorted(self.epochs):
            for name, v in self.epochs[k].items():
                if name != "epoch":
                    out.setdefault(name, []).append(v)
        return out
