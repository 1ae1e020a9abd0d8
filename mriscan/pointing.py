"""The pointing game: does a class-activation map's peak fall on the tumor?

Reads a boxes file (``file, class, x_center, y_center, width, height``, YOLO fractions), maps
each boxed slice's map peak (``mriscan.explain``) back to the source image and counts a hit
inside the box, and, as the game's authors do, within 15 pixels of it (Zhang et al. 2018).
``mriscan explain MODEL FOLDER --boxes BOXES.csv`` is its command.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from mriscan.config import DEFAULT_CAM
from mriscan.errors import ImageDecodeError, MriscanError
from mriscan.explain import check_method, class_activation_map, map_peak
from mriscan.readers import NO_ANATOMY_RULE, file_sha256, has_no_anatomy
from mriscan.tasks import healthy_like

log = logging.getLogger(__name__)

__all__ = [
    "BOX_COLUMNS",
    "POINTING_TOLERANCE_PX",
    "TOLERANCE_SIDES",
    "SliceBoxes",
    "peak_box_distance",
    "peak_fraction",
    "peak_in_any_box",
    "peak_in_box",
    "pointing_game",
    "pointing_rule",
    "pointing_target",
    "read_boxes",
    "slices_without_box",
]


class SliceBoxes(NamedTuple):
    """The tumor boxes of one slice: its ``cls`` (class name) and ``boxes``, each
    (x_center, y_center, width, height) in fractions of the image side (YOLO)."""

    cls: str
    boxes: tuple[tuple[float, float, float, float], ...]


BOX_COLUMNS = ("file", "class", "x_center", "y_center", "width", "height")


def read_boxes(
    path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None
) -> dict[str, SliceBoxes]:
    """Tumor boxes from a CSV ``file,class,x_center,y_center,width,height`` (fractions of the
    image side, the YOLO convention; ``file`` relative to the data folder; spaces after the
    commas are ignored; with ``root``, "\\" separates folders as "/" does). A file on several
    lines has several boxes (a slice with several lesions: a map's peak inside any of them
    counts as a hit), which must name one class. A byte-order mark (spreadsheets' "CSV
    UTF-8") is read as such, not as part of the first column's name.

    Keys are the ``file`` values with "." and ".." folded (``os.path.normpath``), so one
    file spelled two ways ("./a/x.jpg", "a/x.jpg") is one slice; with ``root`` (the data
    folder) an absolute path inside it is keyed by its path relative to it, as the others.

    Raises
    ------
    MriscanError
        Naming the line: on a missing column (named), a value that is not a fraction in
        [0, 1], a box of zero width or height, a file whose lines name different classes, or
        (with ``root``) a path outside the data folder; or, naming the file, when it is not
        UTF-8 text.
    """
    try:
        return _read_box_rows(path, root)
    except UnicodeDecodeError as exc:
        raise MriscanError(
            f"{path} is not UTF-8 text (byte {exc.start}: {exc.reason}): save it as UTF-8 "
            '(a spreadsheet\'s "CSV UTF-8"), then run the command again.'
        ) from None


def _read_box_rows(
    path: str | os.PathLike[str], root: str | os.PathLike[str] | None
) -> dict[str, SliceBoxes]:
    """``read_boxes``' reading (UTF-8, with or without a byte-order mark)."""
    import csv

    out: dict[str, SliceBoxes] = {}
    first_line: dict[str, int] = {}
    with open(path, newline="", encoding="utf-8-sig") as fh:
        # spaces around the commas ("file , class, ...", as people type CSV) and capitals in
        # the header ("File,Class") are not part of a name
        reader = csv.DictReader(fh, skipinitialspace=True)
        found = [f.strip().lower() for f in (reader.fieldnames or ())]
        reader.fieldnames = found
        if missing := [c for c in BOX_COLUMNS if c not in found]:
            raise MriscanError(
                f"{path} lacks the column(s) {missing}: a boxes file has the columns "
                f"{list(BOX_COLUMNS)} (fractions of the image side), comma-separated; its "
                f"header reads {found}."
            )
        for line, row in enumerate(reader, start=2):
            if None in row:  # more values than header columns
                raise MriscanError(
                    f"{path}, line {line}: {len(found) + len(row[None])} values under a header "
                    f"of {len(found)} columns: quote a value that holds a comma."
                )
            row = {k: (v or "").strip() for k, v in row.items()}
            for col in ("file", "class"):
                if not row[col]:
                    raise MriscanError(f"{path}, line {line}: the {col} column is empty.")
            try:
                vals = tuple(float(row[k]) for k in BOX_COLUMNS[2:])
            except (TypeError, ValueError):
                raise MriscanError(f"{path}, line {line}: box values must be numbers.") from None
            if not all(0.0 <= v <= 1.0 for v in vals):
                raise MriscanError(f"{path}, line {line}: box values must be fractions in [0, 1].")
            if vals[2] == 0.0 or vals[3] == 0.0:
                raise MriscanError(
                    f"{path}, line {line}: the box of {row['file']} has zero width or height: "
                    "no peak can fall inside it; give the tumor's extent."
                )
            try:
                key = _box_key(row["file"], root)
            except ValueError as exc:
                raise MriscanError(f"{path}, line {line}: {exc}") from None
            old = out.get(key)
            if old is not None and old.cls != row["class"]:
                raise MriscanError(
                    f"{path}, line {line}: {row['file']} is boxed as {row['class']!r} here and "
                    f"as {old.cls!r} on line {first_line[key]}: a slice has one class."
                )
            first_line.setdefault(key, line)
            earlier = old.boxes if old is not None else ()
            out[key] = SliceBoxes(row["class"], (*earlier, vals))
    return out


def _box_key(file: str, root: str | os.PathLike[str] | None) -> str:
    """A boxes file's ``file`` value with "." and ".." folded; with ``root``, the path
    relative to it of a path inside it (an absolute one, or one through "..": lexically, or
    else with links resolved, as when the data folder is given through a link). With
    ``root``, a backslash is read as a folder separator (a boxes file written on Windows)
    unless a file of that very name exists (on POSIX a name may hold one).

    Raises
    ------
    ValueError
        If, with ``root``, the path lies outside it (the boxes file's paths are the data
        folder's files).
    """
    if root is not None and "\\" in file and not os.path.lexists(os.path.join(root, file)):
        # a boxes file written on Windows ("glioma\\1.jpg"): the backslash is its separator
        file = file.replace("\\", "/")
    key = os.path.normpath(file) if file else file
    if root is None or not key:
        return key

    def inside(p: str, base: str) -> bool:
        return p != base and os.path.commonpath([base, p]) == base

    base = os.path.normpath(os.path.abspath(root))
    full = os.path.normpath(os.path.join(base, key))
    if inside(full, base):
        return os.path.relpath(full, base)
    real, real_base = os.path.realpath(full), os.path.realpath(base)
    if inside(real, real_base):
        return os.path.relpath(real, real_base)
    raise ValueError(
        f"{file} lies outside the data folder {root}: the file column names the data "
        "folder's files, relative to it (give the folder that holds them all as IMAGES)"
    )


def pointing_rule(card: Any, box_class: str) -> str | None:
    """Why the pointing game does not score boxed slices of ``box_class`` with this model, or
    None when it scores them (then ``pointing_target`` says how). ``card``: the ``ModelCard``.

    The rule, one per kind of model:

    - a box of the model's healthy class (in any case), or of a healthy class's name
      (``mriscan.tasks.healthy_like``: "normal", "notumor", ...), is not scored (a box marks
      a tumor);
    - a two-class model with a healthy class (yes/no, tumor vs no tumor): every other boxed
      slice is a tumor slice, whatever tumor type its box names (figshare's glioma, meningioma,
      pituitary on a ``brain_mri`` model): scored;
    - any other model (K > 2 classes, or two tumor types without a healthy class): a boxed
      slice is scored only when its class is a model class, as the map drawn is that class's;
      for two tumor types only the positive class (``class_names[1]``), as the map of a
      two-class model is that of its one output, the positive class's (as ``explain`` draws
      it). A tumor type the model does not have is not scored: it has no map of its own, and
      "correct" has no meaning for it.
    """
    if card.healthy is not None and box_class.casefold() == card.healthy.casefold():
        # any case: a "NoTumor" box must not be scored as a tumor slice of a yes/no model
        return "the model's healthy class (a box marks a tumor)"
    if healthy_like(box_class):  # "normal", "notumor" on a yes/no model: no tumor either
        # (tester30: scored as tumor slices of a yes/no model, every one a hit)
        return "a healthy class's name (a box marks a tumor)"
    if card.binary and card.healthy is not None:
        return None
    if box_class not in card.class_names:
        same = [c for c in card.class_names if c.casefold() == box_class.casefold()]
        return "not a class of the model" + (
            f" (it has {same[0]!r}: class names are case-sensitive; write the boxes file's "
            "class as the model's)"
            if same
            else ""
        )
    if card.binary and box_class != card.class_names[1]:
        return (
            f"the negative class of a two-class model without a healthy class (its map is "
            f"that of the one output, {card.class_names[1]!r})"
        )
    return None


def pointing_target(card: Any, box_class: str, probs: np.ndarray) -> tuple[int, bool]:
    """The pointing game's rule for one boxed slice: (output whose map is drawn, whether the
    slice counts as correctly classified).

    A two-class model with a healthy class: its positive output, correct when called the tumor
    (positive) class. Otherwise the box class's own output (for a two-class model its one
    output, the positive class's), correct when exactly that class is predicted. ``card``: the
    ``ModelCard``; ``probs``: its (K,) class probabilities.

    Raises
    ------
    MriscanError
        If ``pointing_rule`` says slices of ``box_class`` are not scored with this model
        (e.g. a pituitary box for a glioma/meningioma/notumor model).
    """
    if (why := pointing_rule(card, box_class)) is not None:
        raise MriscanError(
            f"The pointing game does not score {box_class!r} slices with a model of the classes "
            f"{list(card.class_names)}: {why}. Leave them out (pointing_rule)."
        )
    pred = card.decide(probs)
    if card.binary:
        return 1, pred == card.class_names[1]
    return card.class_names.index(box_class), pred == box_class


def peak_in_any_box(
    image: np.ndarray, cam: np.ndarray, boxes: Sequence[Sequence[float]], config: Any
) -> bool:
    """Whether ``peak_in_box`` holds for one of ``boxes`` (a slice with several lesions)."""
    return any(peak_in_box(image, cam, box, config) for box in boxes)


def peak_fraction(image: np.ndarray, cam: np.ndarray, config: Any) -> tuple[float, float]:
    """The map's maximum mapped back to the source ``image`` (H, W) through the preprocessing
    geometry of ``config`` (``mriscan.preprocess.source_point``), as (x, y) fractions of the
    image's width and height from its top-left edge (the boxes' convention)."""
    from mriscan.preprocess import source_point

    r, c = map_peak(cam)
    sy, sx = source_point(image, r, c, config)
    h, w = image.shape
    # source_point puts pixel centres at integers; box fractions run from the image's edge
    return (sx + 0.5) / w, (sy + 0.5) / h


#: The pointing game's tolerance as its authors defined it: a peak within 15 pixels of an
#: annotated object is a hit (Zhang et al., "Top-down Neural Attention by Excitation
#: Backprop", ECCV 2016 / IJCV 2018, section on the pointing game; their images, PASCAL VOC
#: and COCO, are about 500 pixels a side, as figshare's 512² slices). In source-image pixels.
POINTING_TOLERANCE_PX = 15.0
#: longer sides (source pixels) outside which ``pointing_game`` warns that 15 pixels are another
#: share of the side than on the authors' ~500-pixel images (half to twice that size)
TOLERANCE_SIDES = (256, 1024)


def peak_box_distance(
    image: np.ndarray, cam: np.ndarray, boxes: Sequence[Sequence[float]], config: Any
) -> float:
    """Distance in source-image pixels (float) from the map's peak (``peak_fraction``: the
    peak pixel's centre mapped back to ``image`` (H, W) through the preprocessing geometry of
    ``config``) to the nearest of ``boxes`` ((x_center, y_center, width, height) fractions of
    the image side, YOLO): 0.0 when the peak lies inside one (``peak_in_box``), else the
    Euclidean distance to that box's nearest edge or corner. ``boxes`` must not be empty.

    Raises
    ------
    ValueError
        If ``boxes`` is empty (no distance is defined).
    """
    if not boxes:
        raise ValueError("peak_box_distance needs at least one box.")
    x, y = peak_fraction(image, cam, config)
    h, w = image.shape
    best = math.inf
    for xc, yc, bw, bh in boxes:
        # how far outside the box's half-widths the peak lies, per axis, in pixels
        dx = max(abs(x - xc) - bw / 2, 0.0) * w
        dy = max(abs(y - yc) - bh / 2, 0.0) * h
        best = min(best, math.hypot(dx, dy))
    return best


def peak_in_box(image: np.ndarray, cam: np.ndarray, box: Sequence[float], config: Any) -> bool:
    """Whether the map's maximum, mapped back to the source ``image`` (H, W) through the
    preprocessing geometry of ``config`` (``peak_fraction``), lies inside ``box`` =
    (x_center, y_center, width, height), fractions of the image side (YOLO)."""
    x, y = peak_fraction(image, cam, config)
    xc, yc, bw, bh = box
    return abs(x - xc) <= bw / 2 and abs(y - yc) <= bh / 2


def pointing_game(
    model_path: str | os.PathLike[str],
    root: str | os.PathLike[str],
    boxes_csv: str | os.PathLike[str],
    *,
    batch_size: int = 16,
    limit: int | None = None,
    progress: Any = None,
    method: str = DEFAULT_CAM,
) -> dict[str, Any]:
    """How often the class-activation map's peak (``method`` as in ``explain``) falls inside the
    tumor's box ("pointing game", Zhang et al. 2018, "Top-down Neural Attention by Excitation
    Backprop"), on the tumor slices the model classifies correctly, per class.

    Which slices are scored, which map and what "correct" means: ``pointing_rule`` and
    ``pointing_target`` (a yes/no model: every boxed tumor type, the map of the tumor output,
    correct when called a tumor; otherwise the box's class must be a model class, its map,
    correct when exactly that class is predicted). Boxed slices of other classes are not scored
    and are listed in ``not_scored``. The peak is mapped back to the source image through the
    preprocessing geometry (``mriscan.preprocess.source_point``) and must lie inside the box:
    this strict rule gives ``pointing``. The game's authors also count a peak within 15
    pixels of the box as a hit (``POINTING_TOLERANCE_PX``, source-image pixels): that rule
    gives ``pointing_within_tolerance``, reported beside it.

    Returns
    -------
    dict
        ``method``, ``rule`` (the rule above for this model, in words), ``per_class``: {class:
        {"n": boxed slices read, "correct": correctly classified,
        "hits": peaks inside the box, "pointing": hits / correct, "hits_within_tolerance":
        peaks within ``tolerance_px`` of the box, "pointing_within_tolerance": those /
        correct}} (a ratio is NaN, undefined, when no slice of the class is correct),
        ``overall`` (the same over all scored classes), ``tolerance_px``,
        ``same_file_merged`` (boxed paths holding the bytes of an earlier one of their class,
        scored as that one: ``_one_per_file``), ``blank`` (boxed slices without
        anatomy, ``mriscan.readers.has_no_anatomy``: uniform or noise; listed in ``slices``,
        not scored, warned of),
        ``tolerance_off_scale``
        (correctly classified slices whose longer side lies outside ``TOLERANCE_SIDES``,
        warned of), ``training_near_duplicates`` (scored slices, not blank ones, that
        near-duplicate the model's training or validation slices, warned of; None when the
        model has no training thumbnails), ``slices`` (per
        scored slice, in file order: ``file``, ``class`` (its box's), ``predicted``,
        ``correct``, ``peak_x``/``peak_y`` (the map's peak as fractions of the source image's
        width / height, ``peak_fraction``), ``distance_px`` (``peak_box_distance``: source
        pixels from the peak to its nearest box, 0 inside; for every scored slice),
        ``hit`` (inside one of its boxes; None when not correctly classified), ``side_px``
        (the source image's longer side: ``distance_px`` is read against it; outside
        ``TOLERANCE_SIDES`` the tolerance is another share of the slice), ``blank``
        (``mriscan.readers.has_no_anatomy``: not scored, its prediction, peak, distance and hit
        None) and
        ``near_training``
        (it near-duplicates a training or validation slice; None when not checkable)),
        ``not_scored`` ({class: {"n": boxed slices listed, "reason":
        ``pointing_rule``'s}} for the box classes the model's rule does not score; their files
        are not read), ``unreadable`` (file, reason), ``without_box`` (``slices_without_box``:
        image files beside the boxed ones that the boxes file does not list, not scored).

    Raises
    ------
    MriscanError
        If no boxed slice could be scored (every path missing or undecodable, no box, or no box
        of a class the model's rule scores): naming how many paths did not resolve, an
        example, and that paths are relative to ``root``, or which classes were not scored and
        why.
    """
    from mriscan.duplicates import signature
    from mriscan.inference import predict_batch
    from mriscan.io import decode_image
    from mriscan.model import load_model
    from mriscan.preprocess import normalize, preprocess

    check_method(method)
    model, card = load_model(model_path)
    cfg = card.preprocess
    boxes = read_boxes(boxes_csv, root)
    items = sorted(boxes.items())[:limit] if limit else sorted(boxes.items())
    not_scored: dict[str, dict[str, Any]] = {}
    for _, box in items:
        if (why := pointing_rule(card, box.cls)) is not None:
            not_scored.setdefault(box.cls, {"n": 0, "reason": why})["n"] += 1
    listed = len(items)
    _warn_folder_classes(items, card)  # every box, scored or not: a class column typo shows
    items = [(rel, box) for rel, box in items if box.cls not in not_scored]
    items, merged = _one_per_file(Path(root), items)
    stats: dict[str, dict[str, int]] = {}
    per_slice: list[dict[str, Any]] = []
    unreadable: list[tuple[str, str]] = []
    sides: list[int] = []  # longer side of each correctly classified slice, source pixels
    thumbs: list[np.ndarray] = []  # each row's slice signature, against the training ones
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        imgs, xs, keep, blanks = [], [], [], []
        for rel, box in chunk:
            try:
                img = decode_image(Path(root) / rel)
            except ImageDecodeError as exc:
                unreadable.append((rel, exc.reason))
                continue
            if has_no_anatomy(img):  # its map peaks at a point fixed by the padding, or at noise
                blanks.append((_blank_row(rel, box, img), signature(img)))
                continue
            imgs.append(img)
            xs.append(preprocess(img, cfg))
            keep.append((rel, box))
            thumbs.append(signature(img))
        if not xs:
            per_slice += [row for row, _ in blanks]
            thumbs += [t for _, t in blanks]
            continue
        x = normalize(np.stack(xs), cfg.normalization, threshold=cfg.threshold)[..., None]
        probs = predict_batch(model, x, batch_size, tta=card.tta)
        classes, correct, rows = [], [], []
        for (rel, box), p in zip(keep, probs, strict=True):
            cls = box.cls
            k, ok = pointing_target(card, cls, p)
            classes.append(k)
            correct.append(ok)
            s = stats.setdefault(cls, {"n": 0, "correct": 0, "hits": 0, "hits_within_tolerance": 0})
            s["n"] += 1
            s["correct"] += int(ok)
            rows.append({"file": rel, "class": cls, "predicted": card.decide(p), "correct": ok})
        cams = class_activation_map(
            model, x, method=method, class_index=None if card.binary else np.array(classes)
        )
        for (_, box), img, cam, ok, row in zip(keep, imgs, cams, correct, rows, strict=True):
            row["peak_x"], row["peak_y"] = peak_fraction(img, cam, cfg)
            row["distance_px"] = peak_box_distance(img, cam, box.boxes, cfg)
            # a miss-classified slice is no trial of the game: its hit is undefined
            row["hit"] = peak_in_any_box(img, cam, box.boxes, cfg) if ok else None
            row["side_px"] = max(img.shape)
            row["blank"] = False
            stats[box.cls]["hits"] += int(bool(row["hit"]))
            near = ok and row["distance_px"] <= POINTING_TOLERANCE_PX
            stats[box.cls]["hits_within_tolerance"] += int(near)
            if ok:
                sides.append(max(img.shape))
        per_slice += rows + [row for row, _ in blanks]
        thumbs += [t for _, t in blanks]
        if progress is not None:
            progress(min(start + batch_size, len(items)), len(items))
    blank = _warn_blank(per_slice)
    if not stats:
        raise MriscanError(
            _nothing_scored(Path(root), boxes_csv, items, unreadable, not_scored, listed, card)
            + (
                f" {blank} of them are blank (no anatomy: {NO_ANATOMY_RULE}): not scored."
                if blank
                else ""
            )
        )
    _warn_missing(Path(root), unreadable, len(items))
    scored = np.array([not row["blank"] for row in per_slice], bool)
    near = _training_look_alikes(model_path, card, thumbs, scored)
    for row, flag in zip(
        per_slice, near if near is not None else [None] * len(per_slice), strict=True
    ):
        row["near_training"] = None if flag is None else bool(flag)
    counts = ("n", "correct", "hits", "hits_within_tolerance")
    total = {k: sum(s[k] for s in stats.values()) for k in counts}
    for s in (*stats.values(), total):
        for ratio, hits in (
            ("pointing", "hits"),
            ("pointing_within_tolerance", "hits_within_tolerance"),
        ):
            s[ratio] = s[hits] / s["correct"] if s["correct"] else float("nan")
    if card.binary and card.healthy is not None:
        rule = (
            f"a boxed slice of any tumor class is correct when called {card.class_names[1]!r}; "
            f"the map is that of {card.class_names[1]!r}; boxes of {card.healthy!r} are not scored"
        )
    else:
        rule = (
            "a boxed slice is correct when its own class is predicted; the map is that class's; "
            "boxed slices of other classes are not scored"
        )
    return {
        "method": method,
        "rule": rule,
        "per_class": stats,
        "overall": total,
        "tolerance_px": POINTING_TOLERANCE_PX,
        "same_file_merged": merged,
        "blank": blank,
        "tolerance_off_scale": _off_scale(sides),
        "training_near_duplicates": None if near is None else int((near & scored).sum()),
        "not_scored": not_scored,
        "slices": per_slice,
        "unreadable": unreadable,
        # boxed slices of the healthy class are not scored: their folder holds no tumor
        "without_box": slices_without_box(
            root,
            {rel: b for rel, b in boxes.items() if b.cls != card.healthy},
            _tumor_classes(card, boxes),
            also_listed=[rel for rel, b in boxes.items() if b.cls == card.healthy],
        ),
    }


def _one_per_file(
    root: Path, items: list[tuple[str, SliceBoxes]]
) -> tuple[list[tuple[str, SliceBoxes]], int]:
    """The boxed files with one entry per file content: a path that holds the same bytes as
    an earlier one of the same class (a link of either kind, a copy) adds its boxes to that
    one, which is scored once; returns the entries and how many were merged (warned of).
    Files that cannot be read stay as they are (their row says why); the same bytes boxed as
    two classes stay apart (each scored as its box says). Each file is read here to hash it
    and again when it is decoded: a merged slice is scored against the boxes of all its paths,
    so every path's content must be known before any slice is scored, and keeping every file's
    bytes until then would hold the whole boxed set in memory; the second read is served from
    the page cache."""

    first: dict[tuple[str, str], int] = {}
    out: list[tuple[str, SliceBoxes]] = []
    merged: list[tuple[str, str]] = []
    class_of: dict[str, tuple[str, str]] = {}  # digest -> (first path, its class)
    across: list[tuple[str, str]] = []  # (path, the path of another class with its bytes)
    for rel, box in items:
        try:
            key = (file_sha256(root / rel), box.cls)
        except OSError:
            out.append((rel, box))
            continue
        seen_as = class_of.setdefault(key[0], (rel, box.cls))
        if seen_as[1] != box.cls:
            across.append((rel, seen_as[0]))
        if key in first:
            k = first[key]
            kept, earlier = out[k]
            out[k] = (kept, SliceBoxes(box.cls, (*earlier.boxes, *box.boxes)))
            merged.append((rel, kept))
            continue
        first[key] = len(out)
        out.append((rel, box))
    for pairs, said in (
        (merged, "another boxed file of their class (a link or a copy; e.g. %s, as %s): each "
         "such slice is scored once, with the boxes of both"),
        (across, "a boxed file of another class (e.g. %s, as %s): each is scored as its box "
         "says, but one image under two classes is likely a labelling error"),
    ):  # fmt: skip
        if pairs:
            log.warning("%d boxed file(s) hold the same bytes as " + said, len(pairs), *pairs[0])
    return out, len(merged)


def _training_look_alikes(
    model_path: Any, card: Any, thumbs: Sequence[np.ndarray], scored: np.ndarray
) -> np.ndarray | None:
    """Which of the boxed slices read (their 16×16 ``thumbs``) near-duplicate one of the
    model's training or validation slices (``mriscan.duplicates.near_duplicates_of``, as
    ``evaluate`` removes them): a boolean mask, shape (len(thumbs),). Those among the
    ``scored`` ones (bool, same shape: not blank) are warned of with their count: the game on
    them says how the model looks at slices it learned from, not at new ones (blank slices
    are not counted: tester30 read 8 look-alikes that were all blank, unscored). None when
    the model has no training thumbnails (or they do not match it: warned of, the game is
    still played)."""
    from mriscan.artifacts import ModelCardError, training_signatures
    from mriscan.duplicates import DEFAULT_THRESHOLD, near_duplicates_of

    try:
        reference = training_signatures(model_path, card)
    except ModelCardError as exc:
        log.warning("the slices are not checked against the model's training slices: %s", exc)
        return None
    if reference is None or not thumbs:
        return None
    mask = near_duplicates_of(np.stack(thumbs), reference)
    n = int((mask & scored).sum())
    if n:
        log.warning(
            "%d of the %d boxed slices scored near-duplicate the model's training or "
            "validation slices (16×16 thumbnails correlating above %s, the rule by which "
            "evaluate removes them; look-alikes of other slices are caught too): on those the "
            "pointing game shows how the model looks at slices it learned from",
            n, int(scored.sum()), DEFAULT_THRESHOLD,
        )  # fmt: skip
    return mask


def _blank_row(rel: str, box: SliceBoxes, img: np.ndarray) -> dict[str, Any]:
    """The per-slice row of a blank slice (no anatomy by ingest's rule,
    ``mriscan.readers.has_no_anatomy``: uniform or noise): listed, not scored (its prediction,
    peak, distance and hit are undefined: None)."""
    row = dict.fromkeys(("predicted", "correct", "peak_x", "peak_y", "distance_px", "hit"))
    return {"file": rel, "class": box.cls, **row, "side_px": max(img.shape), "blank": True}


def _warn_blank(rows: Sequence[dict[str, Any]]) -> int:
    """Warn of boxed slices left out because they are blank (no anatomy:
    ``mriscan.readers.has_no_anatomy``);
    returns how many.
    Their hits and misses would be noise: a blank slice's map peaks at a fixed point."""
    blank = [r["file"] for r in rows if r["blank"]]
    if blank:
        log.warning(
            "%d boxed slice(s) are blank (no anatomy: %s; e.g. %s): nothing to point at, "
            "not scored; check those files (column blank in the per-slice table)",
            len(blank), NO_ANATOMY_RULE, blank[0],
        )  # fmt: skip
    return len(blank)


def _missing(root: Path, unreadable: Sequence[tuple[str, str]]) -> list[str]:
    """The unreadable boxed paths that do not exist under ``root`` (not: exist but undecodable)."""
    return [rel for rel, _ in unreadable if not os.path.lexists(root / rel)]


def _warn_missing(root: Path, unreadable: Sequence[tuple[str, str]], n: int) -> None:
    """Warn when at least half of the ``n`` boxed paths do not exist under ``root``: the game
    is then played on the few that resolve (tester29: a subfolder given as IMAGES scored 1 of
    16 slices without a word on why the rest were missing)."""
    missing = _missing(root, unreadable)
    if missing and 2 * len(missing) >= n:
        log.warning(
            "%d of the %d boxed paths do not exist under the data folder %s (e.g. %r → %s): "
            "the file column is read relative to the folder given as IMAGES; is it the one "
            "the boxes file was written for?",
            len(missing), n, root, missing[0], root / missing[0],
        )  # fmt: skip


def _off_scale(sides: Sequence[int]) -> int:
    """How many of the correctly classified slices' longer ``sides`` lie outside
    ``TOLERANCE_SIDES``, warned of: there the 15-pixel tolerance is another share of the side
    (on a 32-pixel slice half of it, on a 5,000-pixel one 0.3%)."""
    lo, hi = TOLERANCE_SIDES
    odd = [s for s in sides if not lo <= s <= hi]
    if odd:
        log.warning(
            "%d of the %d correctly classified slices have a longer side outside %d-%d pixels "
            "(%d to %d): there 15 pixels are another share of the side than on the ~500-pixel "
            "images the tolerance was set for; read the strict share (inside the box), or "
            "distance_px against each slice's size",
            len(odd), len(sides), lo, hi, min(odd), max(odd),
        )  # fmt: skip
    return len(odd)


def _tumor_classes(card: Any, boxes: dict[str, SliceBoxes]) -> set[str]:
    """The classes whose folders hold tumor slices: those of the boxes, and the model's
    classes, but its healthy one (every class of a model without one)."""
    return ({b.cls for b in boxes.values()} | set(card.class_names)) - {card.healthy}


def _warn_folder_classes(items: Sequence[tuple[str, SliceBoxes]], card: Any) -> None:
    """Warn when a boxed file lies in a class folder of the model other than its box's class:
    the box's class decides how it is scored. A class written in another case than its
    folder's is not warned of here (tester30: "glioma/1.jpg boxed as 'Glioma'" read as a
    wrong folder): ``pointing_rule`` names it where it changes the scoring."""
    odd = [
        (rel, box.cls)
        for rel, box in items
        if len(parts := Path(rel).parts) > 1
        and parts[0] in card.class_names
        and parts[0].casefold() != box.cls.casefold()
    ]
    if odd:
        rel, cls = odd[0]
        log.warning(
            "%d boxed slice(s) lie in another class's folder than their box's class (e.g. %s "
            "boxed as %r); they are scored as the boxes file says: check the class column",
            len(odd), rel, cls,
        )  # fmt: skip


def slices_without_box(
    root: str | os.PathLike[str],
    boxes: dict[str, Any],
    tumor_classes: Sequence[str] = (),
    also_listed: Sequence[str] = (),
) -> dict[str, Any]:
    """The JPEG/PNG files of tumor slices that the boxes file does not list (not scored by the
    pointing game): those directly in a folder holding a boxed slice, or in ``root/<class>``
    for a class of ``tumor_classes``. Returns ``count``, ``per_folder`` (folder relative to
    ``root``, posix, "." for ``root`` itself → count; only folders with some) and ``rule``.
    ``boxes``: ``read_boxes``' result (paths relative to ``root``); ``also_listed``: other
    paths the boxes file lists (boxes of the healthy class): never counted, but their folders
    are not searched for their sake.

    Membership is decided on the paths as given, the way predict and ingest list a folder:
    symbolic links are not resolved, so a folder of links into a larger collection counts its
    own entries, not the files of the folders the links point into.
    """
    from mriscan.io import IMAGE_SUFFIXES

    def lexical(p: Path) -> Path:  # absolute, "."/".." folded, links kept
        return Path(os.path.normpath(os.path.abspath(p)))

    root = lexical(Path(root))
    boxed = {lexical(root / rel) for rel in boxes}
    folders = {p.parent for p in boxed}
    boxed |= {lexical(root / rel) for rel in also_listed}
    folders |= {root / c for c in tumor_classes if (root / c).is_dir()}
    per_folder: dict[str, int] = {}
    for folder in sorted(folders):
        if not folder.is_dir():
            continue
        n = sum(
            1
            for f in folder.iterdir()
            if f.suffix.lower() in IMAGE_SUFFIXES
            and not f.name.startswith(".")
            and f.is_file()
            and f not in boxed
        )
        if n:
            try:
                name = folder.relative_to(root).as_posix()
            except ValueError:
                name = str(folder)
            per_folder[name] = n
    return {
        "count": sum(per_folder.values()),
        "per_folder": per_folder,
        "rule": "JPEG/PNG files directly in a folder holding boxed slices or in a tumor "
        "class's folder that the boxes file does not list; not scored",
    }


def _nothing_scored(
    root: Path,
    boxes_csv: Any,
    items: list[tuple[str, Any]],
    unreadable: list[tuple[str, str]],
    not_scored: dict[str, dict[str, Any]],
    listed: int,
    card: Any,
) -> str:
    """The error of a pointing game that could score no slice: which box classes the model's
    rule does not score (``pointing_rule``), which paths did not resolve (with an example),
    which files could not be decoded, what the paths are relative to."""
    if not listed:
        return f"{boxes_csv} lists no box: nothing to score."
    if not items:
        why = "; ".join(
            f"{c!r} ({v['n']} boxed slices): {v['reason']}" for c, v in not_scored.items()
        )
        return (
            f"None of the {listed} boxed slices of {boxes_csv} is of a class the pointing game "
            f"scores with a model of the classes {list(card.class_names)}: {why}."
        )
    missing = _missing(root, unreadable)
    bad = [(rel, why) for rel, why in unreadable if os.path.lexists(root / rel)]
    parts = [f"None of the {len(items)} boxed slices of {boxes_csv} could be scored."]
    if missing:
        parts.append(
            f"{len(missing)} path(s) do not resolve: the `file` column is read relative to the "
            f"data folder {root} (e.g. {missing[0]!r} → {root / missing[0]}, which does not "
            "exist)."
        )
        first = Path(missing[0]).parts[0] if Path(missing[0]).parts else ""
        if first == root.name or (root.parent / missing[0]).is_file():
            parts.append(
                f"The paths seem to start with the data folder's own name ({first + '/'!r}): "
                "remove that prefix from the boxes file, or pass the folder above as IMAGES."
            )
    if bad:
        parts.append(
            f"{len(bad)} path(s) could not be decoded as JPEG/PNG, the only files the pointing "
            f"game reads (e.g. {bad[0][0]}: {bad[0][1]})."
        )
    return " ".join(parts)
