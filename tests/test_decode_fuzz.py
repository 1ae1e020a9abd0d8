"""Decode fuzzing (issue 19, item 11): every mutant of a real or synthetic slice either decodes
to a 2-D uint8 array or raises ``ImageDecodeError`` -- never another exception.

Mutations: bit flips (biased to the header), truncations, PNG chunk edits (length fields,
CRC-correct field edits, dropped/duplicated/swapped chunks, text and ICC chunks that decompress
past Pillow's limits, stray chunks) and JPEG segment edits (length fields, dropped/duplicated
segments, SOF/DHT/DQT edits, random EXIF blocks, damaged scan data).

Seeded and bounded in time: mutant ``i`` of a run is made by ``default_rng([SEED, i])``, so a
reported failure is reproduced by its index alone. ``MRISCAN_FUZZ_SECONDS`` (default 6 per
test) and ``MRISCAN_FUZZ_INPUTS`` (default 20,000) widen a run. The counts (inputs tried,
decoded, rejected per error class, per source and mutation) are printed with the test's output
and recorded as the junit property ``fuzz_counts``; bench/RESULTS.md holds a longer run.
"""

from __future__ import annotations

import io
import json
import os
import struct
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mriscan.errors import ImageDecodeError
from mriscan.io import decode_bytes

# Pillow warns about damaged EXIF and claimed sizes past its own bomb limit; neither matters here
pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning"),
]

SEED = 19
SECONDS = float(os.environ.get("MRISCAN_FUZZ_SECONDS", "6"))
MAX_INPUTS = int(os.environ.get("MRISCAN_FUZZ_INPUTS", "20000"))
# keeps each mutant's memory and time small (a flipped IHDR may claim ~60 Mpx); the cap is
# checked before any pixel is decoded, so it changes which error a mutant gets, not whether
MAX_PIXELS = 8_000_000


# --- container parsing ---------------------------------------------------------------------

PNG_SIG = b"\x89PNG\r\n\x1a\n"


def _png_chunks(data: bytes) -> list[bytes] | None:
    """The raw chunks (length + type + data + CRC) of a well-formed PNG, else None."""
    if not data.startswith(PNG_SIG):
        return None
    chunks, pos = [], len(PNG_SIG)
    while pos + 12 <= len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        end = pos + 12 + n
        if end > len(data):
            return None
        chunks.append(data[pos:end])
        pos = end
    return chunks


def _chunk(ctype: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))


def _jpeg_segments(data: bytes) -> tuple[list[bytes], bytes] | None:
    """The marker segments before the scan (each FFxx + length + body) and the rest, or None."""
    if not data.startswith(b"\xff\xd8"):
        return None
    segs, pos = [], 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        (n,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        segs.append(data[pos : pos + 2 + n])
        pos += 2 + n
        if marker == 0xDA:  # start of scan: entropy-coded data follows
            return segs, data[pos:]
    return None


# --- mutators: each takes (bytes, rng) and returns the mutant ------------------------------


def bit_flip(data: bytes, rng: np.random.Generator) -> bytes:
    b = bytearray(data)
    for _ in range(int(rng.integers(1, 9))):
        span = min(len(b), 300) if rng.random() < 0.6 else len(b)
        pos = int(rng.integers(0, span))
        b[pos] ^= 1 << int(rng.integers(0, 8))
    return bytes(b)


def truncate(data: bytes, rng: np.random.Generator) -> bytes:
    if rng.random() < 0.5:
        return data[: int(rng.integers(0, min(len(data), 400)))]
    return data[: int(rng.integers(0, len(data)))]


def _rand_u32(rng: np.random.Generator, old: int) -> int:
    choice = rng.integers(0, 3)
    if choice == 0:
        return int(rng.integers(0, 2**32))
    if choice == 1:
        return (old ^ (1 << int(rng.integers(0, 32)))) & 0xFFFFFFFF
    return max(0, old + int(rng.integers(-16, 17)))


def png_chunk_edit(data: bytes, rng: np.random.Generator) -> bytes:
    chunks = _png_chunks(data)
    if not chunks:
        return bit_flip(data, rng)
    op = rng.integers(0, 8)
    k = int(rng.integers(0, len(chunks)))
    c = chunks[k]
    if op == 0:  # a length field changed, CRC as it was
        (n,) = struct.unpack(">I", c[:4])
        chunks[k] = struct.pack(">I", _rand_u32(rng, n)) + c[4:]
    elif op == 1:  # a field edited with a correct CRC (IHDR most often)
        k = 0 if rng.random() < 0.5 else k
        c = chunks[k]
        body = bytearray(c[8:-4])
        for _ in range(int(rng.integers(1, 4))):
            if body:
                body[int(rng.integers(0, len(body)))] = int(rng.integers(0, 256))
        chunks[k] = _chunk(c[4:8], bytes(body))
    elif op == 2:
        del chunks[k]
    elif op == 3:
        chunks.insert(k, c)
    elif op == 4:
        j = int(rng.integers(0, len(chunks)))
        chunks[k], chunks[j] = chunks[j], chunks[k]
    elif op == 5:  # metadata that decompresses past Pillow's 1 MB text / ICC limits
        big = zlib.compress(b"\0" * int(rng.integers(500_000, 3_000_000)), 9)
        kind = rng.integers(0, 3)
        if kind == 0:
            extra = _chunk(b"zTXt", b"Comment\0\0" + big)
        elif kind == 1:
            extra = _chunk(b"iTXt", b"Comment\0\x01\0\0\0" + big)
        else:
            extra = _chunk(b"iCCP", b"icc\0\0" + big)
        chunks.insert(max(1, k), extra)
    elif op == 6:  # a stray chunk of a random (possibly critical) type
        ctype = bytes(int(x) for x in rng.integers(65, 123, 4))
        chunks.insert(max(1, k), _chunk(ctype, rng.bytes(int(rng.integers(0, 64)))))
    else:  # a CRC damaged
        chunks[k] = c[:-4] + rng.bytes(4)
    return PNG_SIG + b"".join(chunks)


def jpeg_segment_edit(data: bytes, rng: np.random.Generator) -> bytes:
    parsed = _jpeg_segments(data)
    if parsed is None:
        return bit_flip(data, rng)
    segs, scan = parsed
    op = rng.integers(0, 7)
    k = int(rng.integers(0, len(segs)))
    s = segs[k]
    if op == 0:  # a length field changed
        (n,) = struct.unpack(">H", s[2:4])
        segs[k] = s[:2] + struct.pack(">H", _rand_u32(rng, n) & 0xFFFF) + s[4:]
    elif op == 1:
        del segs[k]
    elif op == 2:
        segs.insert(k, s)
    elif op == 3:  # SOF / DHT / DQT bodies edited (sizes, components, sampling, tables)
        tables = [i for i, x in enumerate(segs) if x[1] in (0xC0, 0xC1, 0xC2, 0xC4, 0xDB)]
        k = int(rng.choice(tables)) if tables else k
        b = bytearray(segs[k])
        for _ in range(int(rng.integers(1, 4))):
            if len(b) > 4:
                b[int(rng.integers(4, len(b)))] = int(rng.integers(0, 256))
        segs[k] = bytes(b)
    elif op == 4:  # a random EXIF block (exif_transpose parses it)
        tiff = (b"MM\0*" if rng.random() < 0.5 else b"II*\0") + rng.bytes(int(rng.integers(4, 80)))
        body = b"Exif\0\0" + tiff
        segs.insert(0, b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body)
    elif op == 5:  # scan data damaged
        b = bytearray(scan)
        for _ in range(int(rng.integers(1, 20))):
            if b:
                b[int(rng.integers(0, len(b)))] = int(rng.integers(0, 256))
        scan = bytes(b)
    else:  # scan cut short or padded with garbage
        scan = scan[: int(rng.integers(0, len(scan) + 1))] + rng.bytes(int(rng.integers(0, 32)))
    return b"\xff\xd8" + b"".join(segs) + scan


MUTATORS: dict[str, Callable[[bytes, np.random.Generator], bytes]] = {
    "bit_flip": bit_flip,
    "truncate": truncate,
    "chunk_edit": lambda d, r: (png_chunk_edit if d.startswith(PNG_SIG) else jpeg_segment_edit)(
        d, r
    ),
}


# --- inputs --------------------------------------------------------------------------------


def synthetic_inputs() -> list[tuple[str, bytes]]:
    """Small slices in every mode and encoding the decoder accepts."""
    rng = np.random.default_rng(0)
    g = np.clip(rng.normal(100, 40, (44, 60)), 0, 255).astype(np.uint8)
    rgb = np.dstack([g, g[::-1], g[:, ::-1]])
    exif = Image.Exif()
    exif[0x0112] = 6
    cases: list[tuple[str, Image.Image, str, dict]] = [
        ("png_L", Image.fromarray(g), "PNG", {}),
        ("png_RGB", Image.fromarray(rgb), "PNG", {}),
        ("png_RGBA", Image.fromarray(np.dstack([rgb, g])), "PNG", {}),
        ("png_LA", Image.fromarray(np.dstack([g, g]), "LA"), "PNG", {}),
        ("png_P", Image.fromarray(rgb).convert("P"), "PNG", {}),
        ("png_1", Image.fromarray(g).convert("1"), "PNG", {}),
        ("png_I16", Image.fromarray(g.astype(np.uint16) * 250), "PNG", {}),
        ("jpg_L", Image.fromarray(g), "JPEG", {"quality": 90}),
        ("jpg_RGB", Image.fromarray(rgb), "JPEG", {"quality": 90}),
        ("jpg_progressive", Image.fromarray(rgb), "JPEG", {"progressive": True}),
        ("jpg_CMYK", Image.fromarray(rgb).convert("CMYK"), "JPEG", {}),
        ("jpg_exif", Image.fromarray(g), "JPEG", {"exif": exif}),
    ]
    out = []
    for name, img, fmt, kw in cases:
        buf = io.BytesIO()
        img.save(buf, fmt, **kw)
        out.append((name, buf.getvalue()))
    return out


def run_fuzz(sources: list[tuple[str, bytes]], seconds: float, max_inputs: int) -> dict:
    """Decode ``max_inputs`` mutants (or as many as fit in ``seconds``); return the counts."""
    counts: dict[str, Counter] = defaultdict(Counter)
    escaped: list[str] = []
    names = sorted(MUTATORS)
    deadline = time.monotonic() + seconds
    i = 0
    while i < max_inputs and time.monotonic() < deadline:
        rng = np.random.default_rng([SEED, i])
        name, data = sources[int(rng.integers(0, len(sources)))]
        mutation = names[int(rng.integers(0, len(names)))]
        mutant = MUTATORS[mutation](data, rng)
        key = f"{'png' if data.startswith(PNG_SIG) else 'jpeg'}/{mutation}"
        counts[key]["tried"] += 1
        try:
            arr = decode_bytes(mutant, f"mutant {i} of {name}", max_pixels=MAX_PIXELS)
        except ImageDecodeError as exc:
            counts[key]["rejected"] += 1
            counts[key][f"rejected:{type(exc).__name__}"] += 1
        except Exception as exc:  # the fault this test looks for
            counts[key]["escaped"] += 1
            escaped.append(f"mutant {i} ({mutation} of {name}): {type(exc).__name__}: {exc}")
        else:
            if not (isinstance(arr, np.ndarray) and arr.ndim == 2 and arr.dtype == np.uint8):
                counts[key]["escaped"] += 1
                escaped.append(f"mutant {i} ({mutation} of {name}): returned {type(arr)}")
            else:
                counts[key]["decoded"] += 1
        i += 1
    total = Counter()
    for c in counts.values():
        total.update(c)
    return {
        "seed": SEED,
        "inputs": i,
        "seconds": seconds,
        "total": dict(total),
        "by_class": {k: dict(v) for k, v in sorted(counts.items())},
        "escaped": escaped,
    }


def _report(label: str, result: dict, capsys, record_property) -> None:
    record_property("fuzz_counts", json.dumps({k: v for k, v in result.items() if k != "escaped"}))
    t = result["total"]
    with capsys.disabled():
        print(
            f"\n[decode fuzz, {label}] seed {SEED}: {result['inputs']} inputs tried, "
            f"{t.get('decoded', 0)} decoded, {t.get('rejected', 0)} rejected "
            f"(ImageDecodeError), {t.get('escaped', 0)} escaped"
        )
        for key, c in result["by_class"].items():
            kinds = ", ".join(
                f"{k.split(':')[1]} {v}" for k, v in sorted(c.items()) if k.startswith("rejected:")
            )
            print(
                f"  {key:<18} tried {c['tried']:>6}  decoded {c.get('decoded', 0):>6}  "
                f"rejected {c.get('rejected', 0):>6} ({kinds})"
            )


def _check(result: dict) -> None:
    assert result["inputs"] >= 50, "too few inputs in the time budget to mean anything"
    assert not result["escaped"], (
        f"{len(result['escaped'])} of {result['inputs']} mutants escaped ImageDecodeError:\n"
        + "\n".join(result["escaped"][:20])
    )


def test_fuzz_synthetic_png_and_jpeg(capsys, record_property):
    sources = synthetic_inputs()
    for name, data in sources:  # the unmutated inputs all decode
        arr = decode_bytes(data, name)
        assert arr.ndim == 2 and arr.dtype == np.uint8, name
    result = run_fuzz(sources, SECONDS, MAX_INPUTS)
    _report("synthetic PNG/JPEG", result, capsys, record_property)
    _check(result)
    # every kind of mutation ran and the corpus was not trivially all-rejected or all-decoded
    assert {k.split("/")[1] for k in result["by_class"]} == set(MUTATORS)
    assert result["total"].get("decoded", 0) > 0 and result["total"].get("rejected", 0) > 0


def test_fuzz_real_slices(real_data: Path, capsys, record_property):
    files = sorted(p for d in ("yes", "no") for p in (real_data / d).iterdir() if p.is_file())
    # every PNG of the set (the rarer format), plus every 4th JPEG; each must decode unmutated
    pngs = [p for p in files if p.suffix.lower() == ".png"]
    jpegs = [p for p in files if p.suffix.lower() != ".png"][::4]
    sources = [(p.name, p.read_bytes()) for p in pngs + jpegs]
    assert pngs, f"no PNG in {real_data}"
    result = run_fuzz(sources, SECONDS, MAX_INPUTS)
    _report(f"real slices of {real_data.name}", result, capsys, record_property)
    _check(result)


@pytest.mark.parametrize("seed_index", range(3))
def test_mutators_are_reproducible(seed_index):
    """The same index gives the same mutant: a failure is reproduced from its number."""
    _, data = synthetic_inputs()[seed_index]
    for mutate in MUTATORS.values():
        a = mutate(data, np.random.default_rng([SEED, seed_index]))
        b = mutate(data, np.random.default_rng([SEED, seed_index]))
        assert a == b and isinstance(a, bytes)


def test_an_odd_png_does_not_abort_ingest(class_folder, tmp_path):
    """Issue 19 item 11 at the command level: the file is skipped with its reason, the rest
    is committed (ingest reads through ``decode_bytes``)."""
    from mriscan.ingest import IngestConfig, ingest
    from mriscan.preprocess import PreprocessConfig

    png = (class_folder / "yes" / "yes1.png").read_bytes()
    big = zlib.compress(b"a" * 2_000_000)
    odd = png[:33] + _chunk(b"zTXt", b"Comment\0\0" + big) + png[33:]
    (class_folder / "yes" / "odd.png").write_bytes(odd)
    flipped = bytearray(png)
    flipped[11] ^= 0x04  # one bit of IHDR's length field
    (class_folder / "no" / "flipped.png").write_bytes(bytes(flipped))
    report = ingest(
        class_folder, tmp_path / "s.zarr", IngestConfig(preprocess=PreprocessConfig(size=32))
    )
    assert report.n_added == 12
    skipped = dict(report.skipped)
    assert len(skipped) == 2
    assert any("metadata chunk" in reason for reason in skipped.values())
