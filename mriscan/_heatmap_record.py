"""The record of the heat maps ``mriscan explain`` wrote into its output folder, so that a rerun
replaces them instead of adding a second set beside them. Keras-free.

Why: scanner slices' PNGs are named by pseudonyms salted afresh each run
(``series-<hash>_slice<k>_layercam.png``), so a rerun into the same folder cannot overwrite the
earlier run's files and the folder ends up holding two sets no one can tell apart.

``explain_files.json`` in the folder lists, per map method and explained class (the two parts
of a PNG name that keep runs apart on purpose), the PNGs the last run wrote and their SHA-256.
A run removes the files the record lists for its own method and class only once it has written
its own, and only those that still hold the bytes it recorded: never a file explain did not
write, nor one changed since. A run that fails, or writes nothing, removes nothing.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from mriscan.artifacts import write_json
from mriscan.readers import file_sha256

# explain's logger: its messages are explain's, and filtered with them
log = logging.getLogger("mriscan.explain")

#: the record's file name in explain's output folder
RECORD_NAME = "explain_files.json"
_VERSION = 1
_SHA256 = re.compile(r"[0-9a-f]{64}")


class _NotARecordError(ValueError):
    """The file named ``RECORD_NAME`` is not a record this mriscan wrote or can read."""


@dataclass(frozen=True)
class RunFiles:
    """The PNGs one explain run wrote: ``files`` maps each name (in the output folder) to its
    SHA-256; ``method`` and ``explained`` (the ``--class``, or None for the predicted class)
    say which runs it replaces."""

    method: str
    explained: str | None
    files: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.method, str) or not (
            self.explained is None or isinstance(self.explained, str)
        ):
            raise _NotARecordError(f"method/class of {self.method!r}, {self.explained!r}")
        if not isinstance(self.files, dict) or not all(
            _plain_png(n) and isinstance(h, str) and _SHA256.fullmatch(h)
            for n, h in self.files.items()
        ):
            raise _NotARecordError(f"file list {str(self.files)[:200]!r}")

    @property
    def key(self) -> tuple[str, str | None]:
        return (self.method, self.explained)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "class": self.explained, "files": dict(self.files)}


def _plain_png(name: Any) -> bool:
    """Whether ``name`` is a plain ``.png`` file name (no folder, not hidden): the only names a
    record may make explain delete, so a damaged or hand-edited record cannot reach a file
    outside the folder."""
    return (
        isinstance(name, str)
        and name.endswith(".png")
        and not name.startswith(".")
        and not re.search(r"[\\/\x00]", name)
        and Path(name).name == name
    )


def read_record(folder: Path) -> list[RunFiles]:
    """The runs recorded in ``folder`` ([] when it holds no record).

    Raises
    ------
    _NotARecordError
        ``folder/explain_files.json`` exists but is not such a record (another program's file,
        or a newer mriscan's format).
    """
    path = folder / RECORD_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise _NotARecordError(str(exc)) from exc
    version = data.get("format_version") if isinstance(data, dict) else None
    if version != _VERSION:
        raise _NotARecordError(f"format_version {version!r}, expected {_VERSION}")
    runs = data.get("runs")
    if not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs):
        raise _NotARecordError("runs must be a list of objects")
    return [RunFiles(r.get("method"), r.get("class"), r.get("files")) for r in runs]


def _write_record(folder: Path, runs: list[RunFiles]) -> None:
    """Write the record atomically (temp file + ``os.replace``)."""
    write_json(
        folder / RECORD_NAME,
        {
            "format_version": _VERSION,
            "about": "the heat maps `mriscan explain` wrote here, per --method and --class; a "
            "rerun with the same ones removes those files that are unchanged, once it has "
            "written its own",
            "runs": [r.to_dict() for r in runs],
        },
    )


class HeatmapLedger:
    """Records the PNGs one explain run writes into ``folder`` and, when the run ends having
    written some, replaces those an earlier run with the same ``method`` and ``explained``
    class wrote there (see the module docstring). Use as a context manager around the run;
    call ``add`` after each PNG is written."""

    def __init__(self, folder: str | os.PathLike[str], method: str, explained: str | None):
        self.folder = Path(folder)
        self.key = (method, explained)
        self.written: dict[str, str] = {}
        self.problem = ""
        try:  # read before anything is written: the run's own files are never "earlier"
            self.runs = read_record(self.folder)
        except _NotARecordError as exc:
            self.runs = []
            self.problem = str(exc)

    def add(self, png: str | os.PathLike[str]) -> None:
        """Note a PNG this run wrote (in ``folder``)."""
        png = Path(png)
        self.written[png.name] = file_sha256(png)

    def __enter__(self) -> HeatmapLedger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.written:  # nothing new to show: the earlier run's maps stay, as recorded
            return
        if self.problem:
            log.warning(
                "%s is not a record of mriscan explain (%s): heat maps of earlier runs in %s "
                "are kept and this run's are not recorded, so a rerun adds a second set beside "
                "them; move that file away to have reruns replace their heat maps",
                self.folder / RECORD_NAME,
                self.problem,
                self.folder,
            )
            return
        others = [r for r in self.runs if r.key != self.key]
        earlier = {n: h for r in self.runs if r.key == self.key for n, h in r.files.items()}
        # a failed run removes nothing; its files join the earlier run's in the record, so the
        # next complete run replaces both
        files = dict(self.written) if exc_type is None else {**earlier, **self.written}
        try:
            _write_record(self.folder, [*others, RunFiles(*self.key, files)])
        except OSError as err:  # the maps are written: keep the earlier ones, say why
            log.warning(
                "could not write %s (%s): the heat maps of earlier runs in %s are kept",
                self.folder / RECORD_NAME,
                err,
                self.folder,
            )
            return
        if exc_type is not None:
            return
        removed, changed = _remove_unchanged(self.folder, earlier, self.written)
        replaced = removed + sum(n in earlier for n in self.written)
        if replaced or changed:  # INFO: shown on the console by default (mriscan.cli)
            method, explained = self.key
            log.info(
                "replaced %d heat map(s) of an earlier run in %s (same method %s and %s)%s",
                replaced,
                self.folder,
                method,
                "predicted class" if explained is None else f"class {explained}",
                f"; kept {len(changed)} of its files changed since it wrote them: "
                + ", ".join(changed[:3])
                if changed
                else "",
            )


def _remove_unchanged(
    folder: Path, earlier: dict[str, str], written: dict[str, str]
) -> tuple[int, list[str]]:
    """Delete the files of ``earlier`` that this run did not write again and that still hold
    the recorded bytes; returns (how many were deleted, the names kept as changed since)."""
    removed, changed = 0, []
    for name, digest in earlier.items():
        path = folder / name
        if name in written or not _plain_png(name) or path.is_symlink() or not path.is_file():
            continue
        try:
            same = file_sha256(path) == digest
        except OSError:
            same = False
        if not same:
            changed.append(name)
            continue
        path.unlink(missing_ok=True)
        removed += 1
    return removed, changed
