"""scan_predict streams: DICOM series and NIfTI volumes are read, scored and written one after
the other (issue 18, M3), with the rows the former read-everything-first path gave."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from mriscan.aggregate import TOP_K, aggregate_rows
from mriscan.artifacts import ModelCard
from mriscan.io import SourceFile, display_path
from mriscan.readers import (
    FLAG_SUMMARY,
    InputRead,
    InputSlice,
    collect_inputs,
    describe_flags,
    slice_warnings,
)
from mriscan.scan import new_salt
from mriscan.scan_predict import (
    _clash,
    _file_pseudonym,
    _scan_row,
    _slice_name,
    failed_file_name,
    iter_predict_inputs,
    predict_arrays,
    read_inputs,
    series_labels,
)
from mriscan.synth_scanner import (
    FakePatient,
    phantom_volume,
    stack_to_ras,
    write_dicom_series,
    write_nifti,
)

pytestmark = pytest.mark.backend


def _unit_places(
    slices: Sequence[tuple[InputRead, Any]],
) -> dict[str, tuple[Path, int | None, Path]]:
    """The reference's labels, from the slices read (predict takes them from the headers,
    ``mriscan.scan_predict.group_place``; the two agree where every series gave a slice).
    Per unit of ``(read, slice)`` pairs: the place a person knows it by (a DICOM series'
    folder, a NIfTI volume's file), its Series Number (DICOM; else None) and its first file
    (in path order), as ``series_labels`` takes them. A series whose files lie in several
    folders is known by its first file's folder, as ``SeriesReads.places`` has it (so a
    folder holding it and another series labels both)."""
    out: dict[str, tuple[Path, int | None, Path]] = {}
    for r, s in slices:
        old = out.get(s.unit)
        first = r.path if old is None or str(r.path) < str(old[2]) else old[2]
        number = s.series_number if old is None else old[1]
        place = first.parent if r.kind == "dicom" else first
        out[s.unit] = (place, number, first)
    return out


def _reference_predict_inputs(
    model: Any,
    card: Any,
    files: list[SourceFile],
    *,
    threshold: float | None,
    salt: bytes,
    batch_size: int = 32,
    workers: int | None = None,
    show_paths: bool = False,
    top_k: int = TOP_K,
    read_options: Any = None,
    sources: dict[str, list[Any]] | None = None,
) -> list[dict[str, Any]]:
    """``predict_inputs`` as it was before it streamed (commit 6e62a4c): every file read
    first (``read_inputs``), then every row. Kept verbatim as the reference of the rows."""
    reads = read_inputs(files, workers=workers, salt=salt, options=read_options)
    rows: list[dict[str, Any]] = []
    slices = []
    file_rows: list[tuple[int, dict[str, Any]]] = []  # (place in ``reads``, row)
    # one slice per SOP instance and frame in each series: copies of an instance (a copied
    # file, the same instance exported twice) are not scored again, so they cannot tip the
    # series' pooled probability or its slice count
    # unless its pixels differ: a broken anonymiser may give different slices one SOP Instance
    # UID, and each is then scored (under its file's pseudonym, with a warning)
    first_of: dict[tuple[str, str], list[tuple[InputRead, InputSlice]]] = {}
    copies: dict[str, int] = {}  # series unit -> its files not scored again (copies)
    clashes: dict[int, tuple[str, str]] = {}  # id(slice) -> (row name, warning): UID reused
    clashed: dict[str, int] = {}  # series unit -> its slices of a reused UID scored anyway
    failed = []
    for i, r in enumerate(reads):
        if r.error is not None or r.skipped is not None or r.excluded is not None:
            failed.append((i, r))
            continue
        dup = []
        dup_of = []  # the scored slice each of ``dup`` copies
        for s in r.slices:
            key = (s.unit, s.instance) if s.instance else None
            held = first_of.get(key, []) if key is not None else []
            same = next((h for h in held if np.array_equal(h[1].image, s.image)), None)
            if same is not None:
                dup.append(s)
                dup_of.append(same)
                continue
            if held:
                clashes[id(s)] = _clash(r, s, held[0], salt, show_paths)
                clashed[s.unit] = clashed.get(s.unit, 0) + 1
            if key is not None:
                first_of.setdefault(key, []).append((r, s))
            slices.append((r, s))
        if dup:
            unit = dup[0].unit
            copies[unit] = copies.get(unit, 0) + 1
            first = [_slice_name(*rs, show_paths) for rs in dup_of]
            if len(dup) == 1:
                why = f"same SOP Instance UID as {first[0]}"
            else:  # a multi-frame copy: its frames are those of the first file
                why = f"same SOP Instance UID and frames as {first[0].rsplit('#', 1)[0]}"
            if len(dup) < len(r.slices):
                why = f"{len(dup)} of its {len(r.slices)} frames: {why}"
            name = (
                display_path(r.path)
                if show_paths
                else _file_pseudonym(r, unit.split(":", 1)[1], salt)
            )
            err = f"skipped: {why}: scored once" + (
                " (its other frames are scored)" if len(dup) < len(r.slices) else ""
            )
            file_rows.append((i, _scan_row(card, name, None, threshold, err, "file", "")))
    scored = {(u, inst.rsplit("#", 1)[0]): rs[0] for (u, inst), rs in first_of.items()}
    unreadable: dict[str, set] = {}  # series unit -> its instances that could not be read
    for i, r in failed:
        name, err, series, inst = failed_file_name(r, salt=salt, show_paths=show_paths)
        if r.error is not None and series is not None:
            unit = f"series:{series}"
            if inst is not None and (unit, inst) in scored:
                # a damaged copy of an instance read from another file: nothing is missing
                first = _slice_name(*scored[(unit, inst)], show_paths).rsplit("#", 1)[0]
                err += f"; it has the same SOP Instance UID as {first}, which was scored"
                copies[unit] = copies.get(unit, 0) + 1
            else:
                unreadable.setdefault(unit, set()).add(inst or ("file", str(r.path)))
        file_rows.append((i, _scan_row(card, name, None, threshold, err, "file", "")))
    rows += [row for _, row in sorted(file_rows, key=lambda ir: ir[0])]
    slices.sort(key=lambda rs: (rs[1].unit, rs[1].order))
    probs = predict_arrays(model, card, [s.image for _, s in slices], batch_size=batch_size)
    labels = series_labels(_unit_places(slices)) if show_paths else {}
    flagged: dict[str, dict[str, int]] = {}  # unit -> flag -> its slices flagged so
    for (r, s), p in zip(slices, probs, strict=True):
        name, clash = clashes.get(id(s), (_slice_name(r, s, show_paths), ""))
        row = _scan_row(card, name, p, threshold, "", "slice", s.unit)
        row["warning"] = clash
        flags = slice_warnings(s.image)  # the rule of ingest and of predict's JPEG/PNG rows
        if flags:
            row["warning"] = "; ".join(w for w in (clash, describe_flags(flags, s.image)) if w)
            for f in flags:
                flagged.setdefault(s.unit, {}).setdefault(f, 0)
                flagged[s.unit][f] += 1
        if show_paths:
            place = display_path(r.path.parent if r.kind == "dicom" else r.path)
            label = labels.get(s.unit, "")
            row["unit_path"] = f"{place} [{label}]" if label else place
        rows.append(row)
    agg = aggregate_rows(rows, card=card, threshold=threshold, k=top_k)
    for row in rows:
        row.pop("unit_path", None)
    files_of: dict[str, set] = {}
    read_note: dict[str, str] = {}  # unit -> how it was read (the first volume of a 4-D file)
    for r, s in slices:
        files_of.setdefault(s.unit, set()).add(r.path)
        if sources is not None and r.kind == "dicom":
            from mriscan.dicom_sr import SRSource

            frame = int(s.source.rsplit("#", 1)[-1])
            sources.setdefault(s.unit, []).append(SRSource(r.path, frame))
        if r.note:
            read_note[s.unit] = r.note
    owners: dict[str, dict[str, dict[str, int]]] = {}  # unit -> patient/study -> id -> slices
    for _, s in slices:
        if s.unit.startswith("series:"):
            for what, value in (("patient", s.patient), ("study", s.study)):
                counts = owners.setdefault(s.unit, {}).setdefault(what, {})
                counts[value] = counts.get(value, 0) + 1
    for row in agg:
        notes = [read_note[row["unit"]]] if row["unit"] in read_note else []
        for what, counts in owners.get(row["unit"], {}).items():
            if len(counts) > 1:  # counts only: no identifier
                split = " + ".join(str(n) for n in sorted(counts.values(), reverse=True))
                kind = "patients (Patient ID)" if what == "patient" else "studies (Study UID)"
                notes.append(
                    f"its slices belong to {len(counts)} {kind} ({split} slices): check the "
                    "series; --dicom-out files no report for it"
                )
        if missing := len(unreadable.get(row["unit"], ())):
            total = missing + len(files_of.get(row["unit"], ()))
            notes.append(
                f"{missing} of {total} instances unreadable (see their rows): scored from the "
                "others only"
            )
        if n := copies.get(row["unit"], 0):
            notes.append(
                f"{n} file{'s' if n != 1 else ''} holding an instance read from another file "
                "(same SOP Instance UID) not scored again (see their rows)"
            )
        if n := clashed.get(row["unit"], 0):
            notes.append(
                f"{n} slice{'s' if n != 1 else ''} sharing a SOP Instance UID with another "
                "slice of other pixels, scored as slices of their own (see their rows)"
            )
        for flag, count in flagged.get(row["unit"], {}).items():
            what = FLAG_SUMMARY[flag]
            notes.append(f"{count} of {row['slices']} slices {what} (see their rows)")
        # added since (twenty-first session): a series over several folders says so
        folders = {p.parent for p in files_of.get(row["unit"], ())}
        if row["unit"].startswith("series:") and len(folders) > 1:
            notes.append(f"its files lie in {len(folders)} folders: the row pools them all")
        row["warning"] = "; ".join(notes)
    return rows + agg


def _model(model_file: Path) -> tuple[Any, Any]:
    from mriscan.model import load_model

    return load_model(model_file)[0], ModelCard.load(model_file)


def _scanner_set(root: Path) -> Path:
    """Under a folder named after a made-up patient: three series interleaved in one folder
    (flat/a*: series 3, b*: series 7, c*: series 9, whose first slice lies in more/), a copy of
    a1 and a truncated a4, two damaged headers, a series mixing two slice sizes
    (mixed/) and a NIfTI volume."""
    scans = root / "Doe_Jane"
    flat = scans / "flat"
    flat.mkdir(parents=True)
    for name, number, n, seed in (("a", 3, 4, 1), ("b", 7, 2, 2), ("c", 9, 3, 6)):
        stack = phantom_volume(seed, n_slices=n, canvas=32)
        made = write_dicom_series(
            root / f"tmp_{name}", stack, series_number=number, patient=FakePatient(), seed=seed
        )
        for k, f in enumerate(made):
            f.rename(flat / f"{name}{k + 1}.dcm")
    (scans / "more").mkdir()
    (flat / "c1.dcm").rename(scans / "more" / "c1.dcm")
    shutil.copy(flat / "a1.dcm", flat / "z_copy.dcm")
    (flat / "a4.dcm").write_bytes((flat / "a4.dcm").read_bytes()[:-100])
    # a header pydicom cannot read (an element of no VR), and one it reads as no element
    bad_vr = b"\x02\x00\x10\x00ZZ\x04\x00abcd\x08\x00\x18\x00UI\x10\x001.2.3"
    (scans / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + bad_vr)
    (scans / "garbage.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 64)
    mixed = write_dicom_series(
        scans / "mixed", phantom_volume(3, n_slices=3, canvas=32), series_number=4, seed=3
    )
    odd = write_dicom_series(root / "tmp_odd", phantom_volume(4, n_slices=1, canvas=24), seed=4)
    ds = pydicom.dcmread(odd[0])
    ds.SeriesInstanceUID = pydicom.dcmread(mixed[0]).SeriesInstanceUID
    ds.save_as(scans / "mixed" / "IM0009.dcm")
    write_nifti(scans / "vol.nii.gz", stack_to_ras(phantom_volume(5, n_slices=4, canvas=32)))
    return scans


def _key(row: dict[str, Any]) -> tuple[str, str]:
    return (row.get("level", ""), row["path"])


def _assert_same_rows(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    """The same rows (in any order), probabilities up to float rounding."""
    assert sorted(map(_key, got)) == sorted(map(_key, want))
    for g, w in zip(sorted(got, key=_key), sorted(want, key=_key), strict=True):
        assert list(g) == list(w), _key(w)
        for k, v in w.items():
            if isinstance(v, float):
                assert g[k] == pytest.approx(v, abs=1e-6), (k, _key(w))
            else:
                assert g[k] == v, (k, _key(w))


@pytest.mark.parametrize(
    ("show_paths", "batch_size", "read_ahead", "header_fails"),
    [(False, 2, None, False), (True, 2, 0, True), (True, 32, None, False)],
)
def test_streamed_rows_equal_those_of_reading_everything_first(
    model_file, tmp_path, monkeypatch, show_paths, batch_size, read_ahead, header_fails
):
    """Series by series, the rows (slice, file and series rows, their warnings, names with
    and without --show-paths) and the Structured Report evidence are those of the former
    path that read every file first: a copied instance, a truncated one, a mixed-size
    series, a series over two folders, a file whose header cannot be read and a NIfTI
    volume. ``header_fails``: a good file whose header pass fails is read whole first and
    joins its series."""
    import mriscan.dicom as dicom_mod

    scans = _scanner_set(tmp_path / "in")
    files = [f for f in collect_inputs([scans])[0] if f.kind != "image"]
    assert dicom_mod.read_header_ids(scans / "broken.dcm", new_salt()) is None
    if header_fails:
        real = dicom_mod.read_header_ids
        monkeypatch.setattr(
            dicom_mod,
            "read_header_ids",
            lambda p, salt: None if Path(p).name == "b2.dcm" else real(p, salt),
        )
    model, card = _model(model_file)
    salt = new_salt()
    # one reading thread: mriscan.dicom tells a truncated header by the warnings pydicom
    # gives, caught with warnings.catch_warnings, which threads reading at once can lose
    want_sources: dict[str, list[Any]] = {}
    want = _reference_predict_inputs(
        model, card, files, threshold=0.5, salt=salt, show_paths=show_paths, workers=1,
        sources=want_sources,
    )  # fmt: skip
    got_sources: dict[str, list[Any]] = {}
    parts = list(
        iter_predict_inputs(
            model, card, files, threshold=0.5, salt=salt, show_paths=show_paths, workers=1,
            batch_size=batch_size, read_ahead=read_ahead, sources=got_sources,
        )
    )  # fmt: skip
    got = [r for part in parts for r in part]
    _assert_same_rows(got, want)
    assert got_sources == want_sources
    # the set holds what it is meant to test
    errors = " ".join(r["error"] for r in got)
    assert "skipped: same SOP Instance UID" in errors and "mixes slice sizes" in errors
    units = {r["unit"]: r for r in got if r.get("level") in ("series", "volume")}
    assert len(units) == 4 and sum(r["level"] == "volume" for r in units.values()) == 1
    assert any(r["warning"].startswith("1 of 4 instances unreadable") for r in units.values())
    if show_paths:
        # series 9 is named after its first slice's folder, labelled among its last's
        assert {r["path"] for r in units.values()} >= {
            f"{scans / 'flat'} [series 3]",
            f"{scans / 'flat'} [series 7]",
            f"{scans / 'more'} [series 9]",
        }
    # the series over two folders (more/ and flat/) says so, with or without paths
    spread = [r for r in units.values() if "folders" in r["warning"]]
    assert [r["warning"] for r in spread] == ["its files lie in 2 folders: the row pools them all"]
    assert spread[0]["slices"] == 3
    # each unit's rows come after its slices; each part holds whole series
    for unit in units:
        places = [i for i, r in enumerate(got) if r.get("unit") == unit]
        assert got[places[-1]].get("level") in ("series", "volume")
    if batch_size == 2 and not show_paths:
        assert len(parts) > 3  # written as they came, not at the end


def _three_series(root: Path) -> list[Path]:
    """Three series of 3 slices, each in its own folder s0, s1, s2."""
    for k in range(3):
        write_dicom_series(root / f"s{k}", phantom_volume(k, n_slices=3, canvas=32), seed=k)
    return [root / f"s{k}" for k in range(3)]


def _spy_reads(monkeypatch) -> list[str]:
    """The folder name of each file ``mriscan.scan_predict`` reads whole, in call order."""
    import mriscan.scan_predict as sp

    seen: list[str] = []
    real = sp.read_input

    def spy(path, *args, **kwargs):
        seen.append(Path(path).parent.name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(sp, "read_input", spy)
    return seen


def test_each_series_is_yielded_before_the_next_one_is_read(model_file, tmp_path, monkeypatch):
    """Without read-ahead, a series' rows (its slices, then its series row) come before any
    file of the next series is read; with a read-ahead of one file, the next series is read
    meanwhile but not the one after."""
    folders = _three_series(tmp_path / "in")
    seen = _spy_reads(monkeypatch)
    files = collect_inputs([tmp_path / "in"])[0]
    model, card = _model(model_file)
    stream = iter_predict_inputs(
        model, card, files, threshold=0.5, batch_size=2, workers=1, read_ahead=0,
        show_paths=True,
    )  # fmt: skip
    for k, folder in enumerate(folders):
        rows = next(stream)
        assert set(seen) == {f"s{j}" for j in range(k + 1)}, (k, seen)
        assert [r["level"] for r in rows] == ["slice"] * 3 + ["series"]
        assert all(r["path"].startswith(str(folder)) for r in rows)
    with pytest.raises(StopIteration):
        next(stream)

    seen.clear()
    stream = iter_predict_inputs(
        model, card, files, threshold=0.5, batch_size=2, workers=1, read_ahead=1
    )
    next(stream)
    assert "s2" not in seen and "s0" in seen
    stream.close()  # a consumer that stops early: the read-ahead is cancelled or waited for


def test_predict_writes_a_series_rows_before_reading_the_series_after_next(
    model_file, tmp_path, monkeypatch
):
    """The output file holds the first series' rows when the third series is read (the
    second is read ahead while the first is scored), and the progress bar counts the
    scanner files and their headers with the JPEG/PNG files."""
    from PIL import Image

    from mriscan.predict import predict

    folders = _three_series(tmp_path / "in")
    Image.fromarray(np.full((32, 32), 90, np.uint8)).save(tmp_path / "in" / "a.png")
    import mriscan.scan_predict as sp

    out = tmp_path / "p.csv"
    written: list[str] = []
    real = sp.read_input

    calls_at_first_read: list[int] = []

    def spy(path, *args, **kwargs):
        if not calls_at_first_read:
            calls_at_first_read.append(len(calls))
        if Path(path).parent.name == "s2" and not written:
            written.append(out.read_text())
        return real(path, *args, **kwargs)

    monkeypatch.setattr(sp, "read_input", spy)
    calls: list[tuple[int, int]] = []
    rows = predict(
        model_file, [tmp_path / "in"], output=out, batch_size=2, workers=1, show_paths=True,
        progress=lambda done, total: calls.append((done, total)),
    )  # fmt: skip
    import csv
    import io

    early = list(csv.DictReader(io.StringIO(written[0])))
    assert [r["path"] for r in early if r["level"] == "series"] == [str(folders[0])]
    assert len(early) == 1 + 3 + 1  # the PNG, the slices and the row of series s0
    assert len([r for r in rows if r.get("level") == "series"]) == 3
    # one bar over the PNG, the 9 DICOM headers (read to group the files into series, before
    # any pixel data) and the 9 DICOM files: after the PNG, each header, each series
    headers = [(1 + h, 19) for h in range(1, 10)]
    assert calls == [(1, 19), *headers, (13, 19), (16, 19), (19, 19)]
    assert calls_at_first_read == [10]


def test_the_header_pass_reports_every_half_percent_and_at_the_end(tmp_path):
    """Progress of the grouping pass on many DICOM files: every n // 200 headers, and the
    last; other kinds of file are no header to count."""
    from concurrent.futures import ThreadPoolExecutor

    from mriscan.io import SourceFile
    from mriscan.scan_predict import _header_pass, progress_total

    files = [SourceFile(tmp_path / f"f{k}.dcm", "dicom") for k in range(1001)]
    files.insert(7, SourceFile(tmp_path / "v.nii", "nifti"))
    seen: list[int] = []
    with ThreadPoolExecutor(2) as pool:
        ids = _header_pass(files, b"s" * 16, pool, seen.append)
    assert ids == [None] * 1002  # none of them exists: no header
    assert seen == [*range(5, 1001, 5), 1001]
    assert progress_total(files) == 1002 + 1001
