"""Prediction: image files (parallel decode, the model's own preprocessing) or store samples,
batched inference with the model card's threshold and test-time flip."""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import numpy as np

from mriscan.errors import ConfigError, ImageDecodeError, MriscanError
from mriscan.inference import check_threshold, columns_for, predict_batch, prediction_row
from mriscan.io import IMAGE_SUFFIXES, decode_image, display_path
from mriscan.preprocess import normalize, preprocess
from mriscan.readers import (
    ReadOptions,
    describe_flags,
    settings_for_model,
    slice_warnings,
    warn_unseen_kinds,
)

__all__ = [
    "ENGINES",
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
ENGINES = ("auto", "keras", "onnx")


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


def _prepare(path: Path, cfg: Any) -> tuple[np.ndarray | None, str, str]:
    """One file as the model takes it: (float32 (S, S), "", warning) or (None, why it is
    unreadable, ""). The warning names a slice with nothing to see (uniform, or a side under
    ``mriscan.readers.MIN_SIDE`` pixels), as ingest does.

    Decoding (Pillow), preprocessing and normalisation all release the GIL, so threads run
    them in parallel with each other and with inference.
    """
    try:
        image = decode_image(path)
    except ImageDecodeError as exc:
        return None, exc.reason, ""
    flags = slice_warnings(image)
    warning = describe_flags(flags, image) if flags else ""
    x = normalize(preprocess(image, cfg), cfg.normalization, threshold=cfg.threshold)
    return x, "", warning


class _Prefetcher:
    """Prepares the files of ``paths`` in batches of ``batch_size`` on ``pool``, up to ``ahead``
    batches before they are asked for; iterating yields ``(chunk, prepared)`` in input order.

    Threads, not processes: TensorFlow, Numba's thread pool and Blosc do not survive ``fork``.
    The first batches start on construction, so they are prepared while the model loads.
    """

    def __init__(
        self, paths: Sequence[Path], cfg: Any, batch_size: int, pool: Any, ahead: int = 4
    ) -> None:
        self.chunks = [list(paths[i : i + batch_size]) for i in range(0, len(paths), batch_size)]
        self._cfg = cfg
        self._pool = pool
        self._pending: deque[list[Future]] = deque()
        self._submitted = 0
        self._ahead = max(1, ahead)
        self._fill()

    def _fill(self) -> None:
        while len(self._pending) < self._ahead and self._submitted < len(self.chunks):
            chunk = self.chunks[self._submitted]
            self._pending.append([self._pool.submit(_prepare, p, self._cfg) for p in chunk])
            self._submitted += 1

    def __iter__(self) -> Iterator[tuple[list[Path], list[tuple[np.ndarray | None, str]]]]:
        for chunk in self.chunks:
            futures = self._pending.popleft()
            self._fill()
            yield chunk, [f.result() for f in futures]

    def cancel(self) -> None:
        """Drop the batches not started yet (after an error or an early stop)."""
        for futures in self._pending:
            for f in futures:
                f.cancel()
        self._pending.clear()


def _batches(
    model: Any, card: Any, prefetch: _Prefetcher, thr: float | None, batch_size: int
) -> Iterator[list[dict[str, Any]]]:
    """The rows of the prefetched files, one list per batch, in input order: inference of one
    batch runs while the pool prepares the next ones."""
    for chunk, prepared in prefetch:
        good = [i for i, (x, *_) in enumerate(prepared) if x is not None]
        probs: dict[int, np.ndarray] = {}
        if good:
            x = np.stack([prepared[i][0] for i in good])[..., None]
            out = predict_batch(model, x, batch_size, tta=card.tta)
            probs = dict(zip(good, out, strict=True))
        rows = [
            prediction_row(path, probs.get(i), card, thr, "" if i in probs else prepared[i][1])
            for i, path in enumerate(chunk)
        ]
        for row, (_, _, warning) in zip(rows, prepared, strict=True):
            row["warning"] = warning
        yield rows


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

    A pipeline: ``workers`` threads decode, preprocess and normalise the next batches while
    the model predicts the current one (``model.predict_on_batch``, one call per batch; with
    ``card.tta`` the slices and their mirror images together, see
    ``mriscan.inference.predict_batch``).

    Parameters
    ----------
    model : keras.Model or any object with ``predict_on_batch``
    card : ModelCard
    paths : sequence of Path
    threshold : float, optional
        Decision threshold of a two-class model (default: the card's).
    batch_size : int
        Files per model call (the call has ``2 * batch_size`` rows with ``card.tta``).
    workers : int, optional
        Threads that prepare files (default: the number of cores).
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
    if own:  # an unknown suffix fails here, before any work
        writer = PredictionWriter(output, columns=columns_for(card))
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        prefetch = _Prefetcher(paths, card.preprocess, batch_size, pool)
        return _predict_prefetched(
            model, card, prefetch, thr, batch_size, writer=writer, own=own, progress=progress
        )


def _predict_prefetched(
    model: Any,
    card: Any,
    prefetch: _Prefetcher,
    thr: float | None,
    batch_size: int,
    *,
    writer: PredictionWriter | None,
    own: bool,
    progress: Callable[[int, int], None] | None,
) -> list[dict[str, Any]]:
    """``predict_files`` on files whose preparation has already started; ``own``: open and
    close ``writer`` here."""
    total = sum(len(c) for c in prefetch.chunks)
    rows: list[dict[str, Any]] = []
    try:
        with writer if own else contextlib.nullcontext():
            for batch in _batches(model, card, prefetch, thr, batch_size):
                rows += batch
                if writer is not None:
                    writer.write(batch)
                if progress is not None:
                    progress(len(rows), total)
    finally:
        prefetch.cancel()
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
    engine: str = "auto",
    read_options: ReadOptions | None = None,
    dicom_out: str | os.PathLike[str] | None = None,
) -> list[dict[str, Any]]:
    """Predict files and folders with a saved model (threshold: the model's, unless given).

    JPEG/PNG files give one row each (``columns_for(card)``); DICOM files and NIfTI volumes
    one row per slice plus one per series / volume (``mriscan.scan_predict.iter_predict_inputs``,
    rule in ``mriscan.aggregate.RULE``; columns ``level``, ``unit``, ``slices``,
    ``aggregate`` added); files that are no input and folders that cannot be listed one error
    row each. ``output``
    (``.csv``, ``.jsonl`` or ``.json``) is written as the run goes (see ``PredictionWriter``):
    JPEG/PNG rows batch by batch, then the scanner rows series by series / volume by volume as
    each is scored (``mriscan.scan_predict.iter_predict_inputs``: in the order of each
    series' first file; memory holds about one series' slices, not the whole input);
    ``progress(done, total)`` is called after each batch of image files, as the DICOM
    files' headers are read to group them into series, and after each scored series (units
    of work done: one per input file, plus one per DICOM file for its header). ``show_paths`` names
    scanner slices, scanner files that failed and the files beside them that are no input
    (``mriscan.scan_predict.problem_rows``) by path instead of by pseudonym; ``read_options``
    (``mriscan.readers.ReadOptions``) says how DICOM and NIfTI files are read: what it leaves
    open is read as the model card records for the training data (``ModelCard.reader``; the
    defaults for an older card), and a chosen setting that differs is logged when it is of a
    kind of file the model was trained on (``mriscan.readers.settings_for_model``).

    ``engine`` runs the model: ``keras`` (the ``.keras`` file, through TensorFlow), ``onnx``
    (its export ``X.onnx`` made by ``mriscan.onnx_engine.export_onnx``, through ONNX Runtime:
    no TensorFlow import, seconds sooner per run, the same probabilities up to float rounding),
    or ``auto``: ``onnx`` when ``X.onnx`` exists beside the model, else ``keras``. The first
    batches of files are decoded and preprocessed while the model loads.

    ``dicom_out``: a folder where each DICOM series row also gets its finding as a DICOM
    Structured Report in the source's study (``mriscan.dicom_sr.write_series_report``: it
    carries the source's patient module, unlike ``output``), written once ``output`` is
    complete; the returned series row then has ``dicom`` (the file) and
    ``dicom_series_number`` (the report's Series Number; with ``dicom_note`` when the source
    series has none, see ``mriscan.dicom_sr.write_series_reports``) or ``dicom_skipped`` (why
    not: one series' failure leaves the others written), a NIfTI volume row and each predicted
    JPEG/PNG row ``dicom_skipped`` (not a DICOM input). These keys are not written to
    ``output``, which stays as it is without ``dicom_out``.

    Raises
    ------
    MriscanError
        If ``output`` has an unknown suffix or ``dicom_out`` exists and is no folder (both
        before anything is read), or no input file is found.
    ConfigError
        If ``engine`` is not one of ``ENGINES``.
    OnnxExportError
        If the ONNX export is missing (``engine="onnx"``) or was made from another model file.
    """
    from mriscan.readers import collect_inputs
    from mriscan.scan import new_salt
    from mriscan.scan_predict import (
        SCAN_COLUMNS,
        iter_predict_inputs,
        problem_rows,
        progress_total,
    )

    if engine not in ENGINES:
        raise ConfigError(f"engine must be one of {ENGINES}. Received: engine={engine!r}.")
    if output is not None:
        PredictionWriter(output)  # an unknown suffix fails here, before any work
    if dicom_out is not None and os.path.lexists(dicom_out) and not Path(dicom_out).is_dir():
        raise MriscanError(
            f"--dicom-out {display_path(dicom_out)} exists and is not a folder: give a folder "
            "(new or existing) for the Structured Reports."
        )
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
    card = _load_card(model_path)
    thr = check_threshold(card, threshold)
    warn_unseen_kinds((f.kind for f in files), card.train_kinds)
    if scans:  # scanner files: read as the training data were, unless chosen otherwise
        read_options = settings_for_model(card.reader, read_options, kinds=card.train_kinds)
    columns = columns_for(card) + (SCAN_COLUMNS if scans else ())
    writer = PredictionWriter(output, columns=columns) if output is not None else None
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        # the first batches are decoded and preprocessed while TensorFlow and the model load
        prefetch = _Prefetcher(paths, card.preprocess, batch_size, pool)
        try:
            model = _load_engine(model_path, card, engine)
        except BaseException:
            prefetch.cancel()
            raise
        # one progress bar over all files: JPEG/PNG first, then the scanner files (whose
        # DICOM headers are read first, to group them into series: a unit each)
        total = len(paths) + progress_total(scans)

        def images_done(done: int, _: int) -> None:
            if progress is not None:
                progress(done, total)

        def scans_done(done: int, _: int) -> None:
            if progress is not None:
                progress(len(paths) + done, total)

        with writer if writer is not None else contextlib.nullcontext():
            rows = _predict_prefetched(
                model, card, prefetch, thr, batch_size, writer=writer, own=False,
                progress=images_done,
            )  # fmt: skip
            more: list[dict[str, Any]] = []
            salt = new_salt()  # this run's pseudonyms
            evidence: dict[str, list[Any]] = {}
            # scanner rows are written series by series, as each is scored
            for part in iter_predict_inputs(
                model,
                card,
                scans,
                threshold=thr,
                batch_size=batch_size,
                workers=workers,
                show_paths=show_paths,
                read_options=read_options,
                salt=salt,
                sources=evidence,
                progress=scans_done,
            ):
                more += part
                if writer is not None:
                    writer.write(part)
            others = problem_rows(problems, inputs, files, salt=salt, show_paths=show_paths)
            more += others
            if writer is not None and others:
                writer.write(others)
    if dicom_out is not None:  # after the predictions are safe in ``output``
        from mriscan.dicom_sr import NOT_DICOM, write_series_reports

        for row in rows:
            if not row["error"]:
                row["dicom_skipped"] = NOT_DICOM
        write_series_reports(more, evidence, card, dicom_out, model_path=model_path, threshold=thr)
    return rows + more


def _load_engine(model_path: str | os.PathLike[str], card: Any, engine: str) -> Any:
    """The model of ``model_path`` run by ``engine`` (see ``predict``)."""
    from mriscan.onnx_engine import onnx_path

    if engine == "onnx" or (engine == "auto" and onnx_path(model_path).is_file()):
        from mriscan.artifacts import ModelCardError
        from mriscan.onnx_engine import OnnxModel

        model = OnnxModel(model_path)
        size = card.preprocess.size
        if tuple(model.input_shape[1:3]) != (size, size):
            raise ModelCardError(
                f"{model.path}: the model takes {model.input_shape[1:3]} inputs but its card "
                f"says {size}×{size} slices; export the model again."
            )
        log.info("Predicting with ONNX Runtime (%s).", display_path(model.path))
        return model
    from mriscan.model import load_model

    return load_model(model_path)[0]


def _load_card(model_path: str | os.PathLike[str]) -> Any:
    """The model card of ``model_path``, checked as ``mriscan.model.load_model`` checks it, but
    without importing Keras (so that preparing files can start first)."""
    from mriscan.artifacts import ModelCard

    path = Path(model_path)
    if not path.is_file():
        raise MriscanError(
            f"No model file at {path}. Train one with `mriscan train` or pass --model PATH."
        )
    card = ModelCard.load(path)
    card.check_model_file(path)
    return card
