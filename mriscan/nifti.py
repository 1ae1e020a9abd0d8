"""NIfTI volumes to uint8 slices (nibabel): canonical orientation, a slicing axis, a slice choice.

A volume is reoriented to the closest canonical orientation (RAS+, ``nibabel.as_closest_canonical``;
voxel axes follow the patient's Right, Anterior, Superior), windowed once per volume by
percentiles, and cut along the chosen plane. Slices are laid out as a radiology viewer shows
DICOM images (the LPS display convention): axial with anterior at the top and the patient's
right on the image's left; coronal with superior at the top and right on the left; sagittal with
superior at the top and anterior on the left. So a NIfTI slice looks like the DICOM or JPEG slice
of the same anatomy, whatever voxel order the file was saved in.

4-D volumes (fMRI, DWI, several echoes): the stated rule is the first volume (index 0 of the
4th axis; ``NiftiSliceMeta.n_volumes`` says how many there were, for the caller to report: a
log line here would name the path, often the patient's name); ``NiftiConfig(four_d="refuse")``
refuses them instead.
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from mriscan.errors import (
    CorruptImageError,
    ImageTooLargeError,
    UnreadableFileError,
    UnsupportedFormatError,
)
from mriscan.io import one_line
from mriscan.scan import (
    NO_ANATOMY_RULE,
    Window,
    check_salt,
    no_anatomy,
    percentile_window,
    salted_hash,
    window_to_uint8,
)
from mriscan.scan_config import NIFTI_PLANES, NiftiConfig

__all__ = ["NiftiConfig", "NiftiRead", "NiftiSlice", "NiftiSliceMeta", "read_nifti"]

logger = logging.getLogger(__name__)

_AXIS = NIFTI_PLANES


@dataclass(frozen=True)
class NiftiSliceMeta:
    """Facts about one slice of a NIfTI volume (no header text is kept).

    Attributes
    ----------
    volume : str
        Salted hash of the volume's key (its path relative to the class folder).
    slice_index : int
        Index along the slicing axis of the canonical volume; it grows toward the patient's
        superior (axial), anterior (coronal) or right (sagittal) side.
    n_slices : int
        Slices along that axis in the volume (before selection).
    plane : str
    volume_index, n_volumes : int
        Which volume of a 4-D file was used (0) and how many it has (1 for 3-D files).
    n_dims : int
        Axes of the file's data array (``img.shape``): 3, 4, or more when the axes past the
        4th have length 1 (a 5-D file of shape (X, Y, Z, T, 1) holds T volumes).
    window_low, window_high : float
        The per-volume percentile window (``window_source`` is always ``"percentile"``).
    foreground_share : float
        This slice's foreground area over the largest slice's (0..1); 0 for a slice without
        anatomy (``mriscan.scan.has_no_anatomy``: uniform or noise).
    pixel_spacing : (float, float)
        Row and column spacing in mm.
    """

    volume: str
    slice_index: int
    n_slices: int
    plane: str
    volume_index: int
    n_volumes: int
    window_source: str
    window_low: float
    window_high: float
    foreground_share: float
    pixel_spacing: tuple[float, float]
    n_dims: int = 3

    @property
    def group(self) -> str:
        """What must stay on one side of a split: the volume."""
        return f"volume:{self.volume}"

    def to_dict(self) -> dict:
        """JSON-ready dict of all fields."""
        d = asdict(self)
        d["pixel_spacing"] = list(d["pixel_spacing"])
        return d


@dataclass(frozen=True)
class NiftiSlice:
    """One slice: ``image`` (H, W) uint8, its ``meta``, and the volume ``path``."""

    image: np.ndarray = field(repr=False)
    meta: NiftiSliceMeta
    path: Path


@dataclass(frozen=True)
class NiftiRead:
    """A volume's kept slices (in index order) and its canonical shape (X, Y, Z) and zooms (mm),
    and ``note``: what the reader could not take from the file (its orientation), or ""."""

    path: Path
    volume: str
    slices: tuple[NiftiSlice, ...]
    shape: tuple[int, int, int]
    zooms: tuple[float, float, float]
    note: str = ""  # read otherwise than the file says (NO_ORIENTATION_NOTE), else ""


#: ``sizeof_hdr``, the header's first field: 348 for NIfTI-1, 540 for NIfTI-2
_HEADER_SIZES = (348, 540)


def _read_head(path: Path) -> bytes | None:
    """The first bytes of the header (NIfTI-2's 540), decompressed for ``.gz``; None when they
    cannot be read (``nib.load`` then names the problem). Read once for every check below."""
    from nibabel.openers import ImageOpener

    try:
        with ImageOpener(path) as fh:
            return fh.read(_HEADER_SIZES[1])
    except Exception:  # unreadable or a broken .gz
        return None


def _check_header_size(path: Path, head: bytes | None) -> None:
    """Refuse a header whose ``sizeof_hdr`` is neither 348 nor 540 (in either byte order).

    nibabel "fixes" such a header (it sets the field and logs a warning) and reads the data
    anyway, but the field is the first one of every NIfTI file: when it is wrong the header is
    damaged, and the rest of it (shape, data type, offset) cannot be trusted either.
    """
    if head is None or len(head) < 4:
        return
    head = head[:4]
    values = {int.from_bytes(head, "little", signed=True), int.from_bytes(head, "big", signed=True)}
    if not values & set(_HEADER_SIZES):
        raise CorruptImageError(
            path,
            f"broken NIfTI header: sizeof_hdr = {int.from_bytes(head, 'little', signed=True)} "
            "(must be 348 for NIfTI-1 or 540 for NIfTI-2), so the rest of the header cannot be "
            "trusted; export the volume again",
        )


#: the most voxels one 3-D volume (the first of a 4-D file) may hold: 1024³, ~4x the largest
#: brain MRI volumes (0.5 mm isotropic whole-head, 512×512×400); a header stating more is
#: refused before its voxels are read (a 36 GB claim ran a minute into "Cannot allocate memory")
MAX_VOLUME_VOXELS = 1024**3


#: bytes of memory reading one voxel takes at its peak: the stored values, their float copy and
#: the reoriented, windowed volume (measured: 7.0 GB for a 1000³ int16 volume)
BYTES_PER_VOXEL = 8


def free_memory() -> int | None:
    """Bytes this process may still allocate: the smaller of the memory the kernel reports
    available (``MemAvailable`` in ``/proc/meminfo``, Linux) and what the address-space limit
    (``ulimit -v``) leaves; None where neither can be read."""
    limits = []
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    limits.append(int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError):
        pass
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            with open("/proc/self/statm", encoding="ascii") as fh:
                used = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
            limits.append(max(soft - used, 0))
    except (ImportError, OSError, ValueError):
        pass
    return min(limits) if limits else None


def _check_memory(path: Path, sizes: list[int]) -> None:
    """Refuse, as this file's error, a volume whose reading would need more memory than is
    free (``BYTES_PER_VOXEL`` per voxel of the first 3-D volume), before its voxels are read:
    numpy's MemoryError would otherwise end the whole run, or the machine would swap."""
    need = math.prod(sizes) * BYTES_PER_VOXEL
    free = free_memory()
    if free is not None and need > free:
        raise ImageTooLargeError(
            path,
            f"reading this {'×'.join(map(str, sizes))} volume needs about {need / 2**30:.1f} "
            f"GiB of memory and {free / 2**30:.1f} GiB are free: free memory, or crop or "
            "resample the volume to fewer voxels first (e.g. with "
            "nibabel.processing.resample_to_output)",
        )


def _check_gzip_magic(path: Path) -> None:
    """Refuse a ``.gz`` file that is not gzip (its first two bytes are not 1f 8b, RFC 1952),
    saying what to do; nibabel's "File <path> is not a gzip file" names neither."""
    if not path.name.lower().endswith(".gz"):
        return
    try:
        with open(path, "rb") as fh:
            magic = fh.read(2)
    except OSError:
        return  # nib.load names it
    if magic and magic != b"\x1f\x8b":
        raise CorruptImageError(
            path,
            "named .gz but not gzip-compressed (it does not start as gzip does): if it is an "
            "uncompressed NIfTI file rename it .nii, else export it again",
        )


def _check_header_fields(path: Path, head: bytes | None) -> None:
    """Refuse a header whose dim or voxel offset cannot describe the file, naming the field.

    nibabel tells the byte order by dim[0] (1-7): a dim[0] out of range makes it read the
    header byte-swapped and then blame the voxel offset; a negative or huge dim[i] surfaces
    only when the voxels are read, as numpy's "memory mapped length must be positive" or
    "Expected 7200000 bytes". Fields as in the NIfTI-1 header (nifti1.h: ``dim`` int16[8]
    at byte 40, ``datatype`` int16 at 70, ``bitpix`` int16 at 72, ``vox_offset`` float32 at
    108) and NIfTI-2 (nifti2.h: ``datatype`` int16 at 12, ``bitpix`` int16 at 14, ``dim``
    int64[8] at 16, ``vox_offset`` int64 at 168); data type codes as nibabel knows them. A file too
    short to hold its header is left to nib.load, which names it.
    """
    if head is None or len(head) < _HEADER_SIZES[0]:
        return
    order = next((o for o in "<>" if int(np.frombuffer(head[:4], o + "i4")[0]) == 348), None)
    two = order is None
    order = order or next(
        (o for o in "<>" if int(np.frombuffer(head[:4], o + "i4")[0]) == 540), "<"
    )
    if two and len(head) < _HEADER_SIZES[1]:
        return
    if two:
        dim = np.frombuffer(head[16:80], order + "i8").tolist()
        code = int(np.frombuffer(head[12:14], order + "i2")[0])
        bitpix = int(np.frombuffer(head[14:16], order + "i2")[0])
        offset = float(np.frombuffer(head[168:176], order + "i8")[0])
    else:
        dim = np.frombuffer(head[40:56], order + "i2").tolist()
        code = int(np.frombuffer(head[70:72], order + "i2")[0])
        bitpix = int(np.frombuffer(head[72:74], order + "i2")[0])
        offset = float(np.frombuffer(head[108:112], order + "f4")[0])
    fix = "export the volume again (the header is damaged)"
    if not 1 <= dim[0] <= 7:
        raise CorruptImageError(
            path,
            f"broken NIfTI header: dim[0] (the number of axes) is {dim[0]}, must be 1 to 7; {fix}",
        )
    sizes = dim[1 : dim[0] + 1]
    if bad := [(i + 1, n) for i, n in enumerate(sizes) if n < 0]:
        i, n = bad[0]
        raise CorruptImageError(
            path, f"broken NIfTI header: dim[{i}] (the size of axis {i}) is {n}, negative; {fix}"
        )
    if (voxels := math.prod(sizes[:3])) > MAX_VOLUME_VOXELS:
        raise CorruptImageError(
            path,
            f"the header states a volume of {'×'.join(map(str, sizes[:3]))} = {voxels:,} voxels, "
            f"more than mriscan reads ({MAX_VOLUME_VOXELS:,}, 1024³): a damaged dim field, or "
            "no brain MRI volume; check the header",
        )
    if code not in nib.nifti1.data_type_codes.code:
        raise CorruptImageError(
            path, f"broken NIfTI header: datatype {code} is no NIfTI data type code; {fix}"
        )
    _check_memory(path, sizes[:3])
    if path.name.lower().endswith(".gz") or 0 in sizes or bitpix <= 0:
        return  # sizes of 0 and data types: _read_volume and nib.load name them
    need = int(offset) + math.prod(sizes) * bitpix // 8
    have = path.stat().st_size
    if need > have:
        shape = "×".join(map(str, sizes))
        raise CorruptImageError(
            path,
            f"the header states {shape} voxels of {bitpix} bits from byte {int(offset)} "
            f"({need:,} bytes in all), but the file holds {have:,} bytes: it is truncated (copy "
            "it again) or its dim or vox_offset field is wrong",
        )


def read_nifti(
    path: str | os.PathLike[str],
    *,
    salt: bytes,
    root: str | os.PathLike[str] | None = None,
    config: NiftiConfig | None = None,
) -> NiftiRead:
    """Read a ``.nii`` / ``.nii.gz`` volume into uint8 slices.

    Parameters
    ----------
    path : path-like
    salt : bytes
        The store's secret salt (``mriscan.scan.new_salt``), for the volume id.
    root : path-like, optional
        The class folder: the volume id hashes ``path`` relative to it (POSIX form), so the same
        tree gives the same ids wherever it lies. Without it, the absolute path is hashed.
    config : NiftiConfig, optional

    Returns
    -------
    NiftiRead
        ``slices``: ``NiftiSlice`` with ``image`` (H, W) uint8, as described in the module doc.

    Raises
    ------
    CorruptImageError
        Broken header, truncated data, zero-size or blank volume, every voxel NaN or
        infinite, unusable affine.
    UnsupportedFormatError
        Not 2-D (one slice, read as X×Y×1), 3-D or 4-D (a file of more axes is read as 4-D
        when its axes past the 4th have length 1, and refused otherwise: NIfTI's 5th axis
        holds several values per voxel, e.g. vector components, not more volumes), or 4-D
        with ``four_d="refuse"``.
    UnreadableFileError
    """
    cfg = config if config is not None else NiftiConfig()
    salt = check_salt(salt)
    path = Path(path)
    if path.is_dir() or not path.exists():
        raise UnreadableFileError(path, "does not exist or is a folder, not a NIfTI file")
    key = Path(os.path.relpath(path, root)).as_posix() if root is not None else str(path.resolve())
    volume = salted_hash(salt, "volume", key)
    _check_gzip_magic(path)
    head = _read_head(path)
    _check_header_size(path, head)
    _check_header_fields(path, head)
    img, stream = _open_gzipped(path)
    try:
        if img is None:
            try:
                img = nib.load(path)
            except Exception as exc:  # ImageFileError, HeaderDataError, OSError, EOFError
                raise CorruptImageError(
                    path,
                    "not a readable NIfTI file: broken or truncated header "
                    f"({one_line(str(exc)).replace(str(path), 'the file')}); export it again",
                ) from exc
        return _read_volume(img, path, volume, cfg)
    finally:
        if stream is not None:
            stream.close()


def _open_gzipped(path: Path):
    """``(image, stream)`` of a gzipped single-file NIfTI-1/2 volume read through ISA-L's gzip
    (``isal.igzip``: the same bytes as Python's ``gzip``, decompressed ~2x faster here, 54 ->
    29 ms for a 256x256x100 int16 volume, with the GIL released), the stream to be closed once
    the voxels are read; ``(None, None)`` for any other file, or when this fails in any way
    (``nib.load`` then reads it, or names what is wrong, as for every other file). Read as a
    stream, not decompressed whole: the first volume of a 4-D file reads only its own bytes."""
    if not path.name.lower().endswith(".gz"):
        return None, None
    from isal import igzip

    stream = None
    try:
        stream = igzip.open(path, "rb")
        head = stream.read(_HEADER_SIZES[1])
        if head[4:12] == b"n+2\x00\r\n\x1a\n":
            cls = nib.Nifti2Image
        elif head[344:348] == b"n+1\x00":
            cls = nib.Nifti1Image
        else:  # a NIfTI pair's header, Analyze, ...: nib.load decides
            stream.close()
            return None, None
        stream.seek(0)
        return cls.from_stream(stream), stream
    except Exception:  # broken or truncated: nib.load reports it as for any file
        if stream is not None:
            stream.close()
        return None, None


def _read_volume(img, path: Path, volume: str, cfg: NiftiConfig) -> NiftiRead:
    """``read_nifti`` after the image was opened."""
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise UnsupportedFormatError(path, f"is a {type(img).__name__}, not a NIfTI-1/2 volume")
    full = tuple(int(s) for s in img.shape)
    if any(s == 0 for s in full) or not full:
        raise CorruptImageError(path, f"zero-size volume (shape {full}); nothing to read")
    shape = full
    while len(shape) > 4 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) < 2:
        raise UnsupportedFormatError(
            path, f"expected a 2-D slice or a 3-D or 4-D volume, got shape {full}"
        )
    if len(shape) > 4:
        raise UnsupportedFormatError(
            path,
            f"{len(full)}-D volume (shape {full}): mriscan reads 3-D volumes and 4-D series of "
            "them, and an axis past the 4th holds several values per voxel (NIfTI's 5th axis: "
            "vector or parameter components, not more volumes); save the 3-D volume to read "
            "as a file of its own (or, if the file should be 3-D, check its header's dim field)",
        )
    n_volumes = shape[3] if len(shape) == 4 else 1
    if len(full) > 3:
        if n_volumes > 1 and cfg.four_d == "refuse":
            raise UnsupportedFormatError(
                path,
                f"{len(full)}-D volume with {n_volumes} volumes (shape {full}); split it, or "
                "read its first volume: `--nifti-4d first` on the command line (NiftiConfig("
                "four_d='first') in Python)",
            )
        if n_volumes > 1:  # the callers say it (``NiftiSliceMeta.n_volumes``), naming no path
            logger.debug(
                "%s: %d-D volume with %d volumes; using the first (index 0), as configured",
                path,
                len(full),
                n_volumes,
            )
        img = img.slicer[(slice(None),) * 3 + (0,) * (len(img.shape) - 3)]
    try:
        raw = np.asanyarray(img.dataobj)  # in the file's voxel order (a memmap for .nii)
    except Exception as exc:  # truncated data: ValueError/EOFError/zlib.error
        if m := re.search(r"Expected (\d+) bytes, got (\d+) bytes", str(exc)):
            need, got = int(m[1]), int(m[2])
            raise CorruptImageError(
                path,
                f"the header states {'×'.join(map(str, full))} voxels ({need:,} bytes of voxel "
                f"data), but the file holds {got:,}: it is truncated (copy it again) or its "
                "dim or vox_offset field is wrong",
            ) from exc
        text = one_line(str(exc))
        if "Compressed file ended" in text or "end-of-stream" in text:
            raise CorruptImageError(
                path, f"the gzip file is truncated ({text}): copy or export it again"
            ) from exc
        raise CorruptImageError(
            path, f"voxel data cannot be read ({text}); check the file, or export it again"
        ) from exc
    if raw.dtype.kind == "c" or raw.dtype.fields is not None:
        raise UnsupportedFormatError(path, f"voxel type {raw.dtype} is not a real scalar")
    if len(shape) == 2:  # one slice saved without its third axis: read as (X, Y, 1)
        raw = raw[..., None]
    if raw.dtype.kind == "f" and not (finite := np.isfinite(raw)).all():
        if not finite.any():
            raise CorruptImageError(
                path, "every voxel is NaN or infinite: there is no image to read; export it again"
            )
        raw = np.nan_to_num(raw, nan=0.0, posinf=0.0, neginf=0.0)
    if raw.dtype.kind == "b":
        raw = raw.astype(np.uint8)
    # the percentiles of the volume in RAS+ order (a view): their even subsample of a large
    # volume is then the same whatever the file's voxel order (tester34: RAS and LPS files
    # of one volume got windows 0..671 and 0..667); the window is applied in the file's own
    # memory order (one pass), and the uint8 volume reoriented
    ras = _ras_view(path, img, raw)
    lo, hi = percentile_window(ras, cfg.window_percentiles)
    scale = 1.0
    if raw.dtype.kind == "f" and raw.dtype.itemsize > 4:
        # the window is applied in float32: values past its range (~3.4e38) would become
        # infinite and the volume "blank"; a percentile window is the same picture on the
        # volume divided by its largest magnitude (the recorded window stays in file units)
        peak = float(np.max(np.abs(raw))) if raw.size else 0.0
        if peak > _FLOAT32_SAFE:
            scale = peak
    axis = _AXIS[cfg.plane]
    canon, data = _canonical(path, img, raw, lo / scale, hi / scale, scale)
    area, noise = _brain_area(data, axis, cfg.foreground_level, cfg.brain_fraction)
    n = data.shape[axis]
    if noise.any() and not noise.all():
        # the window again, without the slices of noise: a few loud ones (a spike, a corrupt
        # slice) stretch the volume's window until the head falls under the foreground level
        # (tester33), or into a few grey levels, where its slices read as uniform (tester34)
        kept = np.take(ras, np.flatnonzero(~noise), axis=axis)
        lo2, hi2 = percentile_window(kept, cfg.window_percentiles)
        if (lo2, hi2) != (lo, hi):
            lo, hi = lo2, hi2
            canon, data = _canonical(path, img, raw, lo / scale, hi / scale, scale)
            area, _ = _brain_area(data, axis, cfg.foreground_level, cfg.brain_fraction)
    share = area / area.max() if area.max() > 0 else np.zeros(n)
    if cfg.selection == "all":
        keep = list(range(n))
    elif cfg.selection == "middle":
        m = min(cfg.middle_count, n)
        keep = list(range((n - m) // 2, (n - m) // 2 + m))
    else:
        if area.max() == 0:
            raise CorruptImageError(
                path,
                "blank volume: no slice shows anatomy (no voxel above the foreground level, "
                f"{cfg.foreground_level:g} of the window, or every slice without anatomy: "
                f"{NO_ANATOMY_RULE}); nothing to slice. "
                "Check the file, or read every slice with --nifti-slices all",
            )
        keep = [int(k) for k in np.flatnonzero(share >= cfg.brain_fraction - 1e-12)]
    zooms = tuple(float(z) for z in canon.header.get_zooms()[:3])
    spacing = {0: (zooms[2], zooms[1]), 1: (zooms[2], zooms[0]), 2: (zooms[1], zooms[0])}[axis]
    slices = []
    for k in keep:
        image = np.ascontiguousarray(_display_slice(data, axis, k))
        meta = NiftiSliceMeta(
            volume=volume,
            slice_index=k,
            n_slices=n,
            plane=cfg.plane,
            volume_index=0,
            n_volumes=n_volumes,
            window_source="percentile",
            window_low=lo,
            window_high=hi,
            foreground_share=float(share[k]),
            pixel_spacing=spacing,
            n_dims=len(full),
        )
        slices.append(NiftiSlice(image, meta, path))
    note = NO_ORIENTATION_NOTE if _unoriented(img) else ""
    return NiftiRead(
        path, volume, tuple(slices), tuple(int(s) for s in data.shape), zooms, note=note
    )


def _canonical(path: Path, img, raw: np.ndarray, low: float, high: float, scale: float):
    """``(canon, data)``: ``raw`` (3-D, file order) divided by ``scale``, windowed
    ``low``..``high`` to uint8, as a RAS+ image and its voxel view.

    Raises CorruptImageError for an affine that cannot be oriented."""
    u8 = window_to_uint8(raw / scale if scale != 1.0 else raw, Window("percentile", low, high))
    try:
        # a singular affine makes nibabel's qform decomposition divide by zero and take the
        # determinant of NaNs before it raises: numpy's RuntimeWarnings would reach the
        # console beside the error below, which says it (errstate: this thread only)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            canon = nib.as_closest_canonical(type(img)(u8, img.affine))
    except Exception as exc:  # a singular or non-finite affine
        raise CorruptImageError(path, f"the affine cannot be oriented ({exc})") from exc
    return canon, np.asanyarray(canon.dataobj)


def _brain_area(
    data: np.ndarray, axis: int, level: float, fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per slice along ``axis`` of the RAS+ uint8 volume ``data``: the foreground area (voxels
    above ``level`` × 255; float64 (n,)) and whether the slice is noise (bool (n,),
    ``no_anatomy``). The area of a slice without anatomy (uniform or noise) is 0: noise above
    the level would otherwise count as all brain and, as the largest, push the anatomy below
    ``brain_fraction`` (tester32).

    Slices are judged from the largest area down, until the areas fall under ``fraction`` of
    the largest slice with anatomy: the smaller ones cannot be selected, and are not judged
    (their area stays), which saves a third of the checks on a brain volume."""
    n = data.shape[axis]
    others = tuple(a for a in range(3) if a != axis)
    area = np.count_nonzero(data > round(level * 255), axis=others).astype(np.float64)
    noise = np.zeros(n, bool)
    largest = 0.0  # the largest area of a slice with anatomy so far
    for k in np.argsort(-area, kind="stable"):
        if largest > 0 and area[k] < fraction * largest - 1e-9:
            break
        rule = no_anatomy(_display_slice(data, axis, int(k)))  # the slice as it is stored
        if rule is None:
            largest = max(largest, area[k])
        else:
            area[k] = 0.0
            noise[k] = rule == "noise"
    return area, noise


def _ras_view(path: Path, img, raw: np.ndarray) -> np.ndarray:
    """``raw`` (3-D, file order) as a view in RAS+ voxel order: the orientation
    ``nib.as_closest_canonical`` applies (``nib.io_orientation`` of the affine).

    Raises CorruptImageError for an affine that cannot be oriented."""
    from nibabel.orientations import apply_orientation, io_orientation

    try:
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return apply_orientation(raw, io_orientation(img.affine))
    except Exception as exc:  # a singular or non-finite affine: name it, as nibabel does
        raise CorruptImageError(
            path, f"the affine cannot be oriented ({exc}; affine {np.asarray(img.affine)})"
        ) from exc


#: magnitudes above this are rescaled before the float32 window (float32's max / 1e3)
_FLOAT32_SAFE = float(np.finfo(np.float32).max) / 1e3


#: ``NiftiRead.note`` of a volume whose header states no orientation
NO_ORIENTATION_NOTE = (
    "the header states no orientation (qform_code and sform_code 0): its voxel axes were "
    "taken as they are stored (the 3rd as axial), so the slices may be of another plane; set "
    "the orientation in the converter, or check the slices"
)


def _unoriented(img) -> bool:
    """True if neither the qform nor the sform of ``img``'s header is set (NIfTI codes 0): its
    affine is nibabel's fallback from the voxel sizes, which says nothing of the patient."""
    header = img.header
    return int(header["qform_code"]) == 0 and int(header["sform_code"]) == 0


def _display_slice(vol: np.ndarray, axis: int, k: int) -> np.ndarray:
    """Slice ``k`` along ``axis`` of a RAS+ volume, laid out like a DICOM image (LPS display)."""
    if axis == 2:  # rows: anterior -> posterior, columns: right -> left
        return vol[::-1, ::-1, k].T
    if axis == 1:  # rows: superior -> inferior, columns: right -> left
        return vol[::-1, k, ::-1].T
    # sagittal: rows superior -> inferior, columns anterior -> posterior
    return vol[k, ::-1, ::-1].T
