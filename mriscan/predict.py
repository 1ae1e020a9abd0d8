"""Prediction: image files (parallel decode, the model's own preprocessing) or store samples,
batched inference with the model card's threshold and test-time flip."""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import numpy as np

from mriscan.errors import ImageDecodeError, MriscanError
from mriscan.inference import check_threshold, columns_for, predict_batch, prediction_row
from mriscan.io import IMAGE_SUFFIXES, decode_image, display_path
from mriscan.preprocess import normalize, preprocess_batch

__all__ = [
    "OUTPUT_SUFFIXES",
    "PredictionWriter",
    "collect_images",
    "predict",
    "predict_files",
    "write_predictions",
]

log = logging.getLogger(__name__)

COLUMNS = ("path", "label", "error")  # the columns of an empty table (see columns_for)
OUTPUT_SUFFIXES = (".csv", ".jsonl", ".json")


def collect_images(inputs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Expand files and folders into image paths; files are kept as given.

    A folder contributes every ``.jpg``/``.jpeg``/``.png`` below it (recursively, sorted),
    except hidden entries *below* it (a name starting with ``.``, e.g. ``.DS_Store`` or
    ``.thumbnails/``); the folder's own path may hold any name (``../scans``,
    ``~/.cache/scans``). Symbolic links to folders are not followed.
    """
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = []
            for dirpath, dirnames, filenames in os.walk(p):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                found += [
                    Path(dirpath) / name
                    for name in filenames
                    if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES
                ]
            paths += sorted(found)
        else:
            paths.append(p)  # a missing or bad file is reported in its row
    return paths


def _decode(path: Path) -> tuple[np.ndarray | None, str]:
    try:
        return decode_image(path), ""
    except ImageDecodeError as exc:
        return None, exc.reason


def _batches(
    model: Any, card: Any, paths: Sequence[Path], thr: float | None, batch_size: int, pool: Any
) -> Iterator[list[dict[str, Any]]]:
    """The rows of ``paths``, one list per batch of ``batch_size`` files, in input order."""
    cfg = card.preprocess
    for start in range(0, len(paths), batch_size):
        chunk = list(paths[start : start + batch_size])
        decoded = list(pool.map(_decode, chunk))
        good = [i for i, (img, _) in enumerate(decoded) if img is not None]
        probs: dict[int, np.ndarray] = {}
        if good:
            batch = preprocess_batch([decoded[i][0] for i in good], cfg)
            x = normalize(batch, cfg.normalization, threshold=cfg.threshold)[..., None]
            out = predict_batch(model, x, batch_size, tta=card.tta)
            probs = dict(zip(good, out, strict=True))
        yield [
            prediction_row(path, probs.get(i), card, thr, "" if i in probs else decoded[i][1])
            for i, path in enumerate(chunk)
        ]


def predict_files(
    model: Any,
    card: Any,
    paths: Sequence[Path],
    *,
    threshold: float | None = None,
    batch_size: int = 32,
    workers: int | None = None,
    output: str | os.PathLike[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    writer: PredictionWriter | None = None,
) -> list[dict[str, Any]]:
    """One row per path with the columns ``columns_for(card)``.

    Bad files get an empty probability and label and the reason in ``error``. ``path`` is the
    file's path as text (``mriscan.io.display_path``: bytes of a name that are not valid
    UTF-8 appear as ``\\xNN``).

    Parameters
    ----------
    output : path, optional
        Rows are streamed to this file as each batch finishes (see ``PredictionWriter``), so
        a crash keeps the rows done so far.
    progress : callable, optional
        ``progress(done, total)`` after each batch (files done, files in all).
    writer : PredictionWriter, optional
        An open writer to stream to instead of ``output`` (the caller closes it).

    Raises
    ------
    ConfigError
        If the threshold is not a number in [0, 1].
    MriscanError
        If ``output`` does not end in one of ``OUTPUT_SUFFIXES``.
    """
    thr = check_threshold(card, threshold)
    own = writer is None and output is not None
    if own:
        writer = PredictionWriter(output, columns=columns_for(card))
    rows: list[dict[str, Any]] = []
    with (
        ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool,
        writer if own else contextlib.nullcontext(),
    ):
        for batch in _batches(model, card, paths, thr, batch_size, pool):
            rows += batch
            if writer is not None:
                writer.write(batch)
            if progress is not None:
                progress(len(rows), len(paths))
    return rows


def _cell(value: Any) -> Any:
    """A CSV cell: floats with 6 decimals, None (and NaN) as an empty cell."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return f"{value:.6f}" if isinstance(value, float) else value


def _json_value(value: Any) -> Any:
    """A JSON value: non-finite floats as null (strict JSON has no NaN)."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


class PredictionWriter:
    """Streams prediction rows to a file as they are made (a context manager).

    The format follows the suffix of ``output``:

    - ``.csv``: a header, then each batch's rows appended and flushed; probabilities with six
      decimals, an unreadable file's probability and label empty.
    - ``.jsonl``: JSON Lines, one object per row, appended and flushed per batch.
    - ``.json``: one JSON array, written when the run ends. Meanwhile the rows go, as JSON
      Lines, to ``<output>.partial`` (e.g. ``p.json.partial``), which is turned into the array
      at ``output`` (atomically: temporary file + ``os.replace``) and removed on success.

    So after a crash or Ctrl-C the rows done so far are in ``output`` (CSV, JSON Lines) or
    ``<output>.partial`` (JSON); a ``.json`` file at ``output`` is always complete (an older
    one is removed when writing starts). Columns
    are ``columns`` when given, else those of the first row written (default ``COLUMNS``);
    a row's missing columns are empty cells; non-finite numbers are written
    as empty cells (CSV) or ``null`` (JSON).

    Raises
    ------
    MriscanError
        If the suffix is not one of ``OUTPUT_SUFFIXES`` (checked on construction, before any
        work is done).
    """

    def __init__(
        self, output: str | os.PathLike[str], columns: Sequence[str] | None = None
    ) -> None:
        self.output = Path(output)
        self.columns = tuple(columns) if columns is not None else None
        self.kind = self.output.suffix.lower()
        if self.kind not in OUTPUT_SUFFIXES:
            raise MriscanError(
                f"Output must end in {', '.join(OUTPUT_SUFFIXES)}. Received: {self.output}."
            )
        self.stream_path = (
            self.output.with_name(self.output.name + ".partial")
            if self.kind == ".json"
            else self.output
        )
        self.rows_written = 0
        self._fh: IO[str] | None = None
        self._csv: csv.DictWriter | None = None

    def __enter__(self) -> PredictionWriter:
        self.output.parent.mkdir(parents=True, exist_ok=True)
        if self.kind == ".json":  # a previous run's result must not pass for this run's
            self.output.unlink(missing_ok=True)
        self._fh = open(self.stream_path, "w", encoding="utf-8", newline="")
        return self

    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        """Append rows and flush them to the operating system."""
        assert self._fh is not None, "use PredictionWriter as a context manager"
        if self.kind == ".csv":
            if self._csv is None:
                fields = self.columns or (tuple(rows[0]) if rows else COLUMNS)
                self._csv = csv.DictWriter(
                    self._fh, fieldnames=list(fields), restval="", extrasaction="ignore"
                )
                self._csv.writeheader()
            self._csv.writerows({k: _cell(v) for k, v in r.items()} for r in rows)
        else:
            for r in rows:
                obj = {k: _json_value(v) for k, v in r.items()}
                self._fh.write(json.dumps(obj, ensure_ascii=False, allow_nan=False) + "\n")
        self._fh.flush()
        self.rows_written += len(rows)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        assert self._fh is not None
        if self.kind == ".csv" and self._csv is None:  # no rows: still a valid table
            csv.DictWriter(self._fh, fieldnames=list(self.columns or COLUMNS)).writeheader()
        self._fh.close()
        if exc_type is not None:
            log.warning(
                "Stopped after %d row(s); they are in %s.",
                self.rows_written,
                display_path(self.stream_path),
            )
            return
        if self.kind == ".json":
            tmp = self.output.with_name(f".{self.output.name}.{os.getpid()}.tmp")
            with (
                open(self.stream_path, encoding="utf-8") as src,
                open(tmp, "w", encoding="utf-8") as dst,
            ):
                dst.write("[")
                for k, line in enumerate(src):
                    dst.write(("," if k else "") + "\n " + line.rstrip("\n"))
                dst.write("\n]\n")
            os.replace(tmp, self.output)
            self.stream_path.unlink()


def write_predictions(rows: Sequence[dict[str, Any]], output: str | os.PathLike[str]) -> Path:
    """Write rows as CSV, JSON Lines or JSON (by the file's suffix; see ``PredictionWriter``)."""
    with PredictionWriter(output) as writer:
        writer.write(rows)
    return writer.output


def predict(
    model_path: str | os.PathLike[str],
    inputs: Sequence[str | os.PathLike[str]],
    *,
    output: str | os.PathLike[str] | None = None,
    threshold: float | None = None,
    batch_size: int = 32,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    show_paths: bool = False,
) -> list[dict[str, Any]]:
    """Predict files and folders with a saved model (threshold: the model's, unless given).

    JPEG/PNG files give one row each (``columns_for(card)``); DICOM files and NIfTI volumes
    one row per slice plus one per series / volume (``mriscan.scan_predict.predict_inputs``,
    rule in ``mriscan.aggregate.RULE``; columns ``level``, ``unit``, ``slices``,
    ``aggregate`` added); folders that cannot be listed one error row each. ``output``
    (``.csv``, ``.jsonl`` or ``.json``) is written as the run goes (see ``PredictionWriter``);
    ``progress(done, total)`` is called after each batch of image files. ``show_paths`` names
    scanner slices by file instead of by pseudonym.

    Raises
    ------
    MriscanError
        If ``output`` has an unknown suffix (before the model is loaded), or no input file is
        found.
    """
    from mriscan.model import load_model
    from mriscan.readers import collect_inputs
    from mriscan.scan_predict import SCAN_COLUMNS, predict_inputs

    if output is not None:
        PredictionWriter(output)  # an unknown suffix fails here, before any work
    files, problems = collect_inputs(inputs)
    if not files:
        shown = ", ".join(display_path(p) for p in inputs)
        raise MriscanError(
            f"No JPEG/PNG, DICOM or NIfTI files found in {shown} (hidden files and folders "
            "below them are skipped)"
            + "".join(f"; {display_path(p)}: {why}" for p, why in problems)
            + "."
        )
    paths = [f.path for f in files if f.kind == "image"]
    scans = [f for f in files if f.kind != "image"]
    model, card = load_model(model_path)
    check_threshold(card, threshold)  # before the output file is opened (and truncated)
    columns = columns_for(card) + (SCAN_COLUMNS if scans else ())
    writer = PredictionWriter(output, columns=columns) if output is not None else None
    with writer if writer is not None else contextlib.nullcontext():
        rows = predict_files(
            model,
            card,
            paths,
            threshold=threshold,
            batch_size=batch_size,
            workers=workers,
            progress=progress,
            writer=writer,
        )
        more: list[dict[str, Any]] = []
        if scans:
            more += predict_inputs(
                model,
                card,
                scans,
                threshold=check_threshold(card, threshold),
                batch_size=batch_size,
                workers=workers,
                show_paths=show_paths,
            )
        more += [{"path": display_path(p), "label": "", "error": why} for p, why in problems]
        if writer is not None and more:
            writer.write(more)
    return rows + more
