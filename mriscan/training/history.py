"""``JsonHistory``: the Keras callback that keeps ``history.json`` current after every epoch."""

from __future__ import annotations

import json
from pathlib import Path

import keras

from mriscan.artifacts import write_json

__all__ = ["JsonHistory"]


class JsonHistory(keras.callbacks.Callback):
    """Writes ``{"run_id": ..., "epochs": [{"epoch": k, "loss": ..., ...}, ...]}`` after every
    epoch (atomically).

    On a resumed run (``resume=True``) the epochs already in the file are kept when the file
    belongs to the same run (same ``run_id``), so the file always covers the whole run; a
    history left by another run is never mixed in.
    """

    def __init__(self, path: Path, resume: bool, run_id: str = "") -> None:
        super().__init__()
        self.path = path
        self.run_id = run_id
        self.epochs: dict[int, dict[str, float]] = {}
        if resume and path.is_file():
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                data = {}
            if isinstance(data, dict) and data.get("run_id") == run_id:
                for rec in data.get("epochs", []):
                    self.epochs[int(rec["epoch"])] = rec

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        rec = {"epoch": epoch, **{k: float(v) for k, v in (logs or {}).items()}}
        rec.pop("learning_rate", None)
        self.epochs[epoch] = rec
        ordered = [self.epochs[k] for k in sorted(self.epochs)]
        write_json(self.path, {"run_id": self.run_id, "epochs": ordered}, indent=1)

    def as_dict(self) -> dict[str, list[float]]:
        """History as metric name → list over epochs."""
        out: dict[str, list[float]] = {}
        for k in sorted(self.epochs):
            for name, v in self.epochs[k].items():
                if name != "epoch":
                    out.setdefault(name, []).append(v)
        return out
