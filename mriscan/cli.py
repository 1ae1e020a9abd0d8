"""The ``mriscan`` command line: a thin click shell over the public API.

Heavy imports (Keras, TensorFlow) happen inside the commands that need them, so ``mriscan --help``
answers at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import os
import shlex
import sys
import typing
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import click

from mriscan.config import (
    CAM_METHODS,
    DEFAULT_CAM,
    MAX_IMAGE_SIZE,
    MIN_IMAGE_SIZE,
    CVConfig,
    TrainConfig,
    override,
)
from mriscan.errors import MriscanError
from mriscan.ingest_config import IngestConfig
from mriscan.io import display_path, one_line
from mriscan.paths import DEFAULT_RAW, DEFAULT_STORE, PHANTOM_STORE
from mriscan.preprocess import PreprocessConfig
from mriscan.scan_config import NIFTI_PLANES, NIFTI_SELECTIONS, DicomConfig, NiftiConfig

if typing.TYPE_CHECKING:
    from mriscan.readers import ReadOptions

DEFAULT_OUT = Path("artifacts")
DEFAULT_MODEL = DEFAULT_OUT / "models" / "best_model.keras"
_PATH = click.Path(path_type=Path)
# a store or an output folder: an existing file there is refused by click in one line
# ("Directory 'x' is a file."), not by a NotADirectoryError after the work is done
_FOLDER = click.Path(file_okay=False, path_type=Path)
# an output file: an existing folder there is refused likewise ("File 'x' is a directory.")
_FILE = click.Path(dir_okay=False, path_type=Path)
_EXISTING = click.Path(exists=True, path_type=Path)
_TYPED = (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT)
_POSITIVE = click.IntRange(min=1)


class _Probability(click.FloatRange):
    """A number in [0, 1]; click's ``FloatRange`` alone lets NaN through (every comparison
    with NaN is false)."""

    def convert(self, value, param, ctx):
        out = super().convert(value, param, ctx)
        if out != out:
            self.fail(f"{value!r} is not a number in [0, 1].", param, ctx)
        return out


_PROBABILITY = _Probability(0.0, 1.0)
_C = typing.TypeVar("_C")


def _field(cls: type, path: str) -> tuple[dataclasses.Field, Any, type]:
    """The dataclass field at dotted ``path`` of ``cls``, its default and its owner class."""
    owner: Any = cls
    *heads, last = path.split(".")
    for head in heads:
        owner = type(getattr(owner(), head))
    f = {x.name: x for x in dataclasses.fields(owner)}[last]
    return f, getattr(owner(), last), owner


#: predict's, explain's and evaluate's note under files named by pseudonym (``level`` "file"
#: rows)
_PSEUDONYM_HINT = (
    "  (DICOM/NIfTI files that gave no slice, and files beside them that are no input, are "
    "named by pseudonym, as scanner slices are: run again with --show-paths to see which "
    "files they are)"
)


def _show_paths_option(slices: bool = True) -> Callable:
    """The --show-paths flag of predict and explain (``slices``: their DICOM/NIfTI slices are
    named by path too) and of evaluate (``slices`` False: its slices keep their store names,
    pseudonyms for scanner slices): one wording for all."""
    what = "DICOM/NIfTI slices, the scanner files" if slices else "the DICOM/NIfTI files"
    return click.option(
        "--show-paths",
        is_flag=True,
        help=f"Name {what} that fail and the files beside them that are no input by path "
        "(default: by pseudonym; scan folders are often named after the patient).",
    )


def config_option(
    cls: type,
    path: str,
    flag: str,
    help: str = "",
    *,
    prefix: str = "cfg",
    choices: typing.Iterable[str] | None = None,
) -> Callable:
    """A click option for setting ``path`` of config class ``cls``: default, choices, type and
    help come from the dataclass (``mriscan.config``), so nothing is restated here.

    The parameter is named ``<prefix>__<path with __>`` (``cfg`` by default);
    ``_typed_overrides`` keeps only the ``cfg`` ones the user typed, so a config's own defaults
    always win otherwise; ``_read_options`` gathers the ``scan`` ones. ``choices`` for a field
    whose dataclass does not declare them.
    """
    f, default, owner = _field(cls, path)
    name = f"{prefix}__" + path.replace(".", "__")
    text = help or f.metadata.get("help", "")
    choices = f.metadata.get("choices") if choices is None else tuple(choices)
    hint = typing.get_type_hints(owner).get(f.name)
    if choices is None and typing.get_origin(hint) is typing.Literal:
        choices = typing.get_args(hint)
    if path.endswith("class_map"):
        return click.option(flag, name, type=_ClassMap(), default=default, help=text)
    if isinstance(default, bool) or (
        default is None and set(typing.get_args(hint)) == {bool, type(None)}
    ):
        # an optional bool (None: the library decides) is a flag pair that defaults to None
        return click.option(
            f"{flag}/--no-{flag[2:]}",
            name,
            default=default,
            show_default=default is not None,
            help=text,
        )
    kw: dict[str, Any] = {"default": default, "show_default": default is not None, "help": text}
    if choices:
        kw["type"] = click.Choice(list(choices))
    elif isinstance(default, tuple):
        kw.update(type=type(default[0]) if default else int, nargs=len(default))
    elif default is not None:
        kw["type"] = type(default)
    else:  # an optional setting: its type is the non-None member of its hint
        kw["type"] = next((t for t in typing.get_args(hint) if t is not type(None)), str)
    return click.option(flag, name, **kw)


class _ClassMap(click.ParamType):
    """``'yes=glioma,meningioma,pituitary;no=notumor'`` or ``@FILE`` (one entry per line),
    parsed by ``mriscan.config.parse_class_map``: a map that names no class (``''``, an empty
    file, comments only) is refused as a usage error, naming the file."""

    name = "MAP"

    def __init__(self, min_targets: int = 2) -> None:
        # 2: a model learns two or more classes; evaluate's data side may keep one
        self.min_targets = min_targets

    def convert(self, value, param, ctx):
        from mriscan.config import parse_class_map

        if isinstance(value, tuple):
            return value
        text = str(value)
        origin = None
        if text.startswith("@"):
            origin = f"The class map file {text[1:]}"
            try:
                text = Path(text[1:]).read_text()
            except OSError as exc:
                self.fail(f"cannot read the class map file {text[1:]}: {exc.strerror}", param, ctx)
        try:
            return parse_class_map(text, min_targets=self.min_targets, origin=origin)
        except MriscanError as exc:
            self.fail(str(exc), param, ctx)


def _typed_overrides(ctx: click.Context, params: dict[str, Any]) -> dict[str, Any]:
    """``{dotted path: value}`` of the config options the user typed (not their defaults)."""
    out = {}
    for name, value in params.items():
        if (path := _cfg_setting(name)) and ctx.get_parameter_source(name) in _TYPED:
            out[path] = value
    return out


def _cfg_setting(name: str) -> str | None:
    """The dotted setting a ``config_option`` parameter sets (``cfg__fit__epochs`` ->
    ``fit.epochs``), or None for any other parameter."""
    return name[5:].replace("__", ".") if name.startswith("cfg__") else None


def _override_typed(ctx: click.Context, base: _C, changes: dict[str, Any]) -> _C:
    """``override(base, changes)``; an invalid setting the user typed is refused naming its
    option (see ``_build_typed``)."""
    return _build_typed(ctx, lambda c: override(base, c), changes, _typed_params(ctx, changes))


def _typed_params(ctx: click.Context, changes: dict[str, Any]) -> dict[str, click.Parameter]:
    """The options the user typed among the settings ``changes`` sets, by dotted setting."""
    params = {}
    for p in ctx.command.params:
        path = _cfg_setting(p.name)
        if path in changes and ctx.get_parameter_source(p.name) in _TYPED:
            params[path] = p
    return params


def _build_typed(
    ctx: click.Context,
    build: Callable[[dict[str, Any]], _C],
    changes: dict[str, Any],
    params: dict[str, click.Parameter],
) -> _C:
    """``build(changes)``, with a ``ConfigError`` caused by a setting the user typed (``params``:
    its option, by dotted setting) turned into a usage error that names the option
    (``--convs-per-block``) rather than the config field (``convs_per_block``).

    A setting that is invalid on its own is named alone; settings that are valid alone but not
    together (``--val-fraction`` with ``--test-fraction``) are named together. A ``ConfigError``
    no typed option causes passes through unchanged (exit status 1).
    """
    from mriscan.errors import ConfigError

    try:
        return build(changes)
    except ConfigError as exc:
        for path, param in params.items():
            try:
                build({path: changes[path]})
            except ConfigError as alone:
                raise click.BadParameter(str(alone), ctx=ctx, param=param) from exc
        together = []
        for path, param in params.items():
            try:
                build({k: v for k, v in changes.items() if k != path})
            except ConfigError:
                continue
            together.append(param.opts[0])
        if not together:
            raise
        names = " and ".join(f"'{flag}'" for flag in together)
        raise click.UsageError(f"Invalid combination of {names}: {exc}", ctx=ctx) from exc


def _sigint_is_ours() -> bool:
    """Whether a SIGINT handler may be set here: in the main thread, where SIGINT has Python's
    default handler (a job started in the background with SIGINT ignored keeps ignoring it)."""
    import signal
    import threading

    return (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    )


@contextlib.contextmanager
def _keeping_ctrl_c() -> Iterator[None]:
    """Run the block with a Ctrl-C (SIGINT) recorded instead of raised, and raise
    ``KeyboardInterrupt`` when the block ends if one came.

    For the import of Keras and its backend (seconds): a ``KeyboardInterrupt`` raised while a
    garbage-collector callback runs is not propagated but printed as "Exception ignored in"
    (Python's ``gc.callbacks``), and JAX registers one (``_xla_gc_callback``) that runs often
    while TensorFlow and Keras load; a Ctrl-C landing there was lost and the command trained to
    the end (seen twice in fourteenth-session checks, 3-4 s after the start). Only in the main
    thread, and only where SIGINT has Python's default handler (a job started in the background
    with SIGINT ignored keeps ignoring it).
    """
    import signal

    if not _sigint_is_ours():
        yield
        return
    pressed: list[int] = []

    def record(signum: int, frame: Any) -> None:
        if not pressed:
            click.echo("Ctrl-C: stopping once the libraries have loaded.", err=True)
        pressed.append(signum)

    signal.signal(signal.SIGINT, record)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if pressed:
        raise KeyboardInterrupt


@contextlib.contextmanager
def _noting_ctrl_c() -> Iterator[list[int]]:
    """Run the block with a Ctrl-C (SIGINT) raised as usual and also noted in the yielded list,
    so that the block can stop at its next step when the ``KeyboardInterrupt`` was lost: raised
    while a garbage-collector callback runs (JAX's ``_xla_gc_callback``, see
    ``_keeping_ctrl_c``), it is printed as "Exception ignored in" and dropped, and the command
    ran to the end (tester25: 3 of ~25 Ctrl-Cs during explain). Main thread and Python's
    default handler only, as ``_keeping_ctrl_c``."""
    import signal

    pressed: list[int] = []
    if not _sigint_is_ours():
        yield pressed
        return

    def note(signum: int, frame: Any) -> None:
        pressed.append(signum)
        signal.default_int_handler(signum, frame)

    signal.signal(signal.SIGINT, note)
    try:
        yield pressed
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _import_keras() -> None:
    """Import Keras and its backend so that a Ctrl-C meanwhile stops the command
    (``_keeping_ctrl_c``); later imports of the modules that use Keras are then quick."""
    with _keeping_ctrl_c():
        import mriscan.model  # noqa: F401  (imports keras, and with it the backend)


def _human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"


# file-system conditions a user fixes outside mriscan: one line, not a traceback
_FS_ERRORS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


class _ErrorsOnly(logging.Filter):
    """Passes log records of level ERROR and above."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


_ERRORS_ONLY = _ErrorsOnly()


class _Group(click.Group):
    """Turns mriscan errors, and file-system errors such as a full disk, into one clear line
    and exit status 1 (no traceback), and a Ctrl-C into one line and exit status 130 (the
    shell's for SIGINT). Writers commit atomically, so such a failure leaves the previous
    store, model and results as they were."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            # click would print only "Aborted!" and exit 1; say what a Ctrl-C leaves behind
            click.echo(
                "\nInterrupted (Ctrl-C). Stores and models are committed whole, so each is as "
                "it was or complete; result files this run was writing may be partial. Run the "
                "command again to finish.",
                err=True,
            )
            ctx.exit(130)
        except MriscanError as exc:
            raise click.ClickException(str(exc)) from exc
        except OSError as exc:
            why = _FS_ERRORS.get(exc.errno)
            if why is None:
                raise
            where = f" while writing {exc.filename}" if exc.filename else ""
            if exc.filename2:  # a rename (os.replace): what failed is replacing the target
                where = f" while replacing {exc.filename2}"
            raise click.ClickException(
                f"Stopped: {why}{where}. Nothing half-written was kept (the previous store, "
                "model, results and heat maps are as they were); free space or fix the "
                "permissions (or the file's attributes) and run the command again."
            ) from exc


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mriscan")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(verbose: int) -> None:
    """mriscan: train and serve brain-MRI tumor classifiers (tumor / no tumor, or any number of
    classes such as glioma / meningioma / pituitary / no tumor).

    Typical flow: ingest class folders into a store, train, evaluate or cross-validate,
    predict and explain. `mriscan train` with no arguments runs the whole job on data/raw
    (or on generated phantom slices when data/raw is empty).
    """
    level = logging.WARNING - 10 * min(verbose + 1, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    # Pillow's DecompressionBombWarning ("... could be decompression bomb DOS attack"): every
    # decode applies mriscan's own pixel cap before decoding (mriscan.io.decode_bytes), which
    # refuses such an image with its own message, or admits it because the user raised the cap
    warnings.filterwarnings("ignore", message=r"Image size \(\d+ pixels\) exceeds limit")
    logging.getLogger("numba").setLevel(logging.WARNING)
    # nibabel logs a header it fixes ("sizeof_hdr should be 348; set sizeof_hdr to 348") to
    # "nibabel.global", which has a stderr handler of its own (nibabel.imageglobals): passed on
    # to the root's handler too, each line came twice; nibabel's own copy is kept
    logging.getLogger("nibabel.global").propagate = False
    # pydicom 3 both logs and warns each of its warnings (pydicom.misc.warn_and_log): the
    # warnings module's copy is dropped; the logged copy names no file and may quote a header
    # value ("Invalid value for VR DA: '<birth date>'"), while mriscan says per file what
    # matters (an error, a note): shown from -v on
    warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
    # (a filter, not a level: pydicom sets its logger's level to WARNING when it is imported,
    # which happens lazily, after this)
    quiet = logging.getLogger("pydicom")
    if verbose < 1 and _ERRORS_ONLY not in quiet.filters:
        quiet.addFilter(_ERRORS_ONLY)
    elif verbose >= 1:
        quiet.removeFilter(_ERRORS_ONLY)
    # highdicom says at INFO each module it copies into a Secondary Capture or Structured
    # Report (explain/predict --dicom-out): a page per run; shown with -vv
    logging.getLogger("highdicom").setLevel(logging.WARNING if verbose < 2 else logging.DEBUG)


def entry() -> None:
    """The ``mriscan`` console script and ``python -m mriscan``: ``main``, after which a
    Ctrl-C ends the process quietly. Once the command has returned (its results written, its
    exit status set), Python still tears down TensorFlow, JAX and their threads for up to
    seconds; a SIGINT then raised ``KeyboardInterrupt`` inside that teardown and printed a
    traceback over the command's output (tester24 #7). With SIGINT's default action restored,
    the process just ends, as any program stopped by Ctrl-C (shell status 130). Only where
    Python's own handler is installed in the main thread (``_sigint_is_ours``)."""
    import signal

    try:
        main()  # standalone mode: ends by raising SystemExit with the command's status
    finally:
        if _sigint_is_ours():
            signal.signal(signal.SIGINT, signal.SIG_DFL)


# how DICOM and NIfTI files are read, on every command that reads them (parameters "scan__...")
_SCAN_OPTIONS = (
    (DicomConfig, "window_percentiles", "--dicom-window", "Percentiles (0-100) of a DICOM "
     "slice's values shown as black and white when it has no Window Center/Width (or with "
     "--no-dicom-header-window).", None),
    (DicomConfig, "use_header_window", "--dicom-header-window", "Window DICOM slices with their "
     "own Window Center/Width when they have one.", None),
    (NiftiConfig, "plane", "--nifti-plane", "Plane NIfTI volumes are sliced in (after "
     "reorienting them to RAS+).", NIFTI_PLANES),
    (NiftiConfig, "selection", "--nifti-slices", "Slices of a NIfTI volume to keep: brain (area "
     ">= --nifti-brain-fraction of the largest), middle (the --nifti-middle-count central "
     "ones) or all.", NIFTI_SELECTIONS),
    (NiftiConfig, "brain_fraction", "--nifti-brain-fraction", "See --nifti-slices brain.", None),
    (NiftiConfig, "middle_count", "--nifti-middle-count", "See --nifti-slices middle.", None),
    (NiftiConfig, "window_percentiles", "--nifti-window", "Percentiles (0-100) of a NIfTI "
     "volume shown as black and white (one window per volume).", None),
    (NiftiConfig, "four_d", "--nifti-4d", "4-D NIfTI volumes: read the first volume (with a "
     "warning), or refuse the file.", ("first", "refuse")),
)  # fmt: skip


def _scan_options(f: Callable) -> Callable:
    """The DICOM/NIfTI reading options (``_SCAN_OPTIONS``, from ``DicomConfig`` and
    ``NiftiConfig``) and --modality."""
    opts = [
        click.option(
            "--modality",
            "scan_modalities",
            multiple=True,
            default=("MR",),
            show_default=True,
            help="DICOM Modality to read (repeat for several; 'any' for all). Images of other "
            "modalities are listed, not used.",
        ),
        *(
            config_option(cls, field, flag, text, prefix=f"scan__{cls.__name__}", choices=ch)
            for cls, field, flag, text, ch in _SCAN_OPTIONS
        ),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _read_options(options: dict[str, Any]) -> ReadOptions:
    """Pop the ``_scan_options`` parameters from a command's ``options`` into the reader
    settings the user typed (``mriscan.readers.ReadOptions.overrides``); the others are left
    to the store's or the model's recorded settings (the configs' defaults where none are)."""
    from mriscan.readers import ReadOptions
    from mriscan.scan_config import ReaderSettings

    ctx = click.get_current_context()
    typed: dict[str, Any] = {}
    params = {}
    by_name = {p.name: p for p in ctx.command.params}
    for name in [n for n in options if n.startswith("scan_")]:
        value = options.pop(name)
        if ctx.get_parameter_source(name) not in _TYPED:
            continue
        if name == "scan_modalities":
            if any(not m.strip() for m in value):
                raise click.BadParameter(
                    "an empty value: give a DICOM Modality code such as MR or CT (repeat the "
                    "option for several), or 'any' for every modality.",
                    ctx=ctx,
                    param_hint="'--modality'",
                )
            any_ = any(m.strip().lower() == "any" for m in value)
            path, value = "dicom.modalities", (None if any_ else tuple(value))
        else:
            _, cls, field = name.split("__", 2)
            path = f"{'dicom' if cls == 'DicomConfig' else 'nifti'}.{field}"
        typed[path], params[path] = value, by_name[name]
    # a bad value fails here, naming the option
    _build_typed(ctx, ReaderSettings().replace, typed, params)
    return ReadOptions(overrides=typed)


class _IngestCommand(click.Command):
    """``ingest``: click's "Did you mean" would offer the hidden ``--class-map`` (kept only to
    say where a class map goes) for a mistyped ``--class``; the options it suggests are those
    ``--help`` lists."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as exc:
            hidden = {o for p in self.params if getattr(p, "hidden", False) for o in p.opts}
            exc.possibilities = [p for p in exc.possibilities or [] if p not in hidden]
            raise


@main.command(cls=_IngestCommand)
@click.argument("raw_dir", type=_EXISTING, required=False)
@click.option(
    "--manifest",
    type=_EXISTING,
    default=None,
    help="CSV with the header path,label[,group] instead of RAW_DIR (paths relative to it).",
)
@click.option(
    "--store",
    "store_path",
    type=_FOLDER,
    default=DEFAULT_STORE,
    show_default=True,
    help="Store directory (or fsspec URL).",
)
@config_option(PreprocessConfig, "size", "--image-size", "Side S of the stored S×S slices.")
@config_option(PreprocessConfig, "aspect", "--aspect", "pad keeps the aspect ratio; stretch fills.")
@config_option(PreprocessConfig, "crop", "--crop", "Crop to the head's bounding box.")
@config_option(
    PreprocessConfig, "align", "--align", "Rotate/shift slices to centre the head's midline."
)
@config_option(
    PreprocessConfig,
    "align_method",
    "--align-method",
    "How the midline is found: fast (coarse-to-fine) or search (the full search that stores "
    "built before the choice existed used).",
)
@config_option(
    PreprocessConfig,
    "smooth",
    "--smooth",
    "Gaussian low-pass σ in pixels of the S×S slice (0: off): removes the fine texture in "
    "which collections differ.",
)
@config_option(IngestConfig, "compress", "--compress")
@click.option(
    "--workers", type=_POSITIVE, default=None, help="Decoding threads [default: CPU cores]."
)
@click.option("--strict", is_flag=True, help="Fail, committing nothing, on any bad or unused file.")
@click.option(
    "--merge", is_flag=True, help="Allow adding a folder other than the one the store holds."
)
# not an ingest setting: kept hidden so that typing it gets where to give it, not "no such
# option" (a store keeps the folders' own classes, so one store serves every class map)
@click.option("--class-map", "class_map_typed", hidden=True, default=None)
@_scan_options
@click.pass_context
def ingest(
    ctx: click.Context,
    raw_dir: Path | None,
    manifest: Path | None,
    store_path: Path,
    workers: int | None,
    strict: bool,
    merge: bool,
    cfg__compress: bool | None,
    class_map_typed: str | None,
    **options: Any,
) -> None:
    """Decode, preprocess and store every input under RAW_DIR/<class>/ (or in --manifest).

    Inputs: JPEG/PNG, DICOM (any suffix, series folders, multi-frame: one sample per frame)
    and NIfTI (.nii, .nii.gz: one sample per kept slice). Re-running brings the store in line
    with the folder: new files are added, a file moved to another class folder takes that label,
    an overwritten file replaces its sample, a deleted file's sample is retired. A DICOM
    instance in other bytes (another encoding) is stored once, the copies recorded as
    duplicates. Bad files, label conflicts (same bytes, or the same DICOM instance, under two
    classes) and unreadable folders are listed; uniform or
    thin images, and near-identical slices under two classes, are stored with a warning; files
    that are no input (e.g. BMP, text) and DICOM images of another modality than --modality
    (default MR) are listed, not stored (--strict: any of these fails, committing nothing, and
    names them all).

    Each class folder is stored under its own name, so one store serves any class map: merge
    or rename classes with --class-map when you train, cv or evaluate.
    """
    from mriscan.ingest import ingest as run_ingest

    if class_map_typed is not None:
        # train on the store itself: it keeps every setting of this ingest (size, reader...)
        words = ["mriscan", "train", str(store_path), "--class-map", class_map_typed or "MAP"]
        raise click.UsageError(
            "ingest takes no --class-map: the store keeps each class folder under its own "
            "name, so one store serves any class map. Run this ingest without --class-map, "
            "then give the map to train, cv or evaluate with the store as DATA, e.g. "
            f"{shlex.join(words)}"
        )

    if (raw_dir is None) == (manifest is None):
        raise click.UsageError("Give either RAW_DIR or --manifest CSV (one of them).")
    raw_dir = raw_dir if raw_dir is not None else manifest

    scan = _read_options(options)
    typed = _typed_overrides(ctx, options)
    base = PreprocessConfig()
    if not typed:
        # adding to an existing store: its own preprocessing unless an option was typed (as
        # train/cv do), so a second folder can be merged without repeating --image-size etc.
        from mriscan.sources import is_store
        from mriscan.store import ImageStore

        if is_store(store_path):
            with ImageStore.open(store_path) as existing:
                base = existing.config
    preprocess = _override_typed(ctx, base, typed)
    if "size" in typed and not MIN_IMAGE_SIZE <= preprocess.size <= MAX_IMAGE_SIZE:
        # PreprocessConfig takes any side (signatures are 16×16); a store is for training
        raise click.BadParameter(
            f"{preprocess.size}: a store's slices must be {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE} "
            "pixels a side, the sizes train and cv take (the network pools 4 times).",
            ctx=ctx,
            param_hint="'--image-size'",
        )
    from mriscan.sources import reading_for_store

    # the reading options typed, on top of the store's recorded ones (None: the store's)
    reader = reading_for_store(store_path, scan)
    cfg = IngestConfig(
        preprocess=preprocess,
        workers=workers,
        strict=strict,
        merge=merge,
        dicom=None if reader is None else reader.dicom,
        nifti=None if reader is None else reader.nifti,
        compress=cfg__compress,
    )
    from mriscan.sources import is_store

    existed = is_store(store_path)
    try:
        with _progress("ingesting") as progress:
            report = run_ingest(raw_dir, store_path, cfg, progress=progress)
    except KeyboardInterrupt:
        # click would print only "Aborted!": say what became of the store
        click.echo(
            f"\nInterrupted: nothing of this run was committed; {display_path(store_path)} "
            + ("holds what its last commit held." if existed else "was not created.")
            + " Run the same command again to ingest.",
            err=True,
        )
        ctx.exit(130)
    _print_ingest(report, manifest=manifest is not None)


@contextlib.contextmanager
def _progress(label: str) -> Iterator[Callable[[int, int], None]]:
    """A ``progress(done, total)`` callback drawing a click progress bar on stderr."""
    state: dict = {"bar": None, "done": 0}

    def progress(done: int, total: int) -> None:
        if state["bar"] is None:
            state["bar"] = click.progressbar(length=total, label=label, file=sys.stderr)
            state["bar"].__enter__()
        state["bar"].update(done - state["done"])
        state["done"] = done

    try:
        yield progress
    finally:
        if state["bar"] is not None:
            state["bar"].__exit__(None, None, None)


def _print_ingest(report, *, manifest: bool = False) -> None:
    """Print an ingest summary (``manifest``: the data came from a CSV manifest, whose rows,
    not folders, give the labels and the files)."""
    added = ", ".join(f"{k}: {v}" for k, v in report.added.items())
    # samples are slices (a DICOM file or NIfTI volume gives several); the duplicate and
    # already-stored counts are of files: each number says which it counts
    click.echo(
        f"Store {report.store}: added {report.n_added} slice(s) ({added}); "
        f"{report.total} slice(s) in total."
    )
    click.echo(
        f"  files: exact duplicates recorded {report.exact_duplicates}; already stored "
        f"{report.already_stored}. Split groups (near-duplicates joined with patients, "
        f"volumes, manifest groups): {report.duplicate_groups}"
    )
    from mriscan.store import ImageStore

    with ImageStore.open(report.store) as store:
        size = store.nbytes_stored()
    click.echo(f"  size on disk {_human_bytes(size)}; {report.seconds:.1f}s")
    changed = {
        "relabelled (label changed in the manifest)"
        if manifest
        else "relabelled (moved to another class)": report.relabelled,
        "replaced (new content)": report.replaced,
        "renamed (the same file under a new name in its class: stored again under it)": (
            report.renamed
        ),
        "removed (no longer listed in the manifest, or deleted)"
        if manifest
        else "removed (file deleted)": report.removed,
    }
    if any(changed.values()):  # fmt: skip
        click.echo(
            "  retired samples: "
            + ", ".join(f"{v} {k}" for k, v in changed.items() if v)
            + (
                " (labels follow the manifest)"
                if manifest
                else " (labels follow the files' current folders)"
            )
        )
    for items, title in (
        (report.skipped, f"skipped {len(report.skipped)} bad file(s) or folder(s):"),
        (
            report.not_images,
            f"{len(report.not_images)} DICOM file(s) without an image, not stored:",
        ),
        (
            report.excluded,
            f"{len(report.excluded)} DICOM image(s) of another modality, not stored "
            "(--modality to include them; --strict refuses them):",
        ),
        (
            report.warnings,
            f"stored with a warning ({len(report.warnings)}; --strict refuses them):",
        ),
        (report.ignored, f"{len(report.ignored)} file(s) or folder(s) not read by rule:"),
        (report.read_notes, f"{len(report.read_notes)} file(s) stored with a note:"),
    ):
        if items:
            click.echo(f"  {title}")
            for path, reason in items:
                click.echo(f"    {display_path(path)}: {one_line(reason)}")
    if report.placeholder_ids:
        from mriscan.dicom import EMPTY_PATIENT_ID, MISSING_PATIENT_ID

        missing = dict(MISSING_PATIENT_ID.values())  # value -> how those files are grouped
        by_value: dict[str, list[str]] = {}
        for path, value in report.placeholder_ids:
            by_value.setdefault(value, []).append(path)
        click.echo(
            f"  warning: {len(report.placeholder_ids)} DICOM file(s) with a placeholder Patient "
            "ID or none, which names no patient: grouped by their study instead, or as said "
            "below (if they are one patient, give them one group in a --manifest's group "
            "column):"
        )
        for value, paths in by_value.items():
            shown = ", ".join(map(display_path, paths[:3])) + (
                f" and {len(paths) - 3} more" if len(paths) > 3 else ""
            )
            if value in missing:
                what = f"{value[1:-1]}: {len(paths)} file(s), {missing[value]}"
            else:
                what = "empty Patient ID" if value == EMPTY_PATIENT_ID else f"Patient ID {value!r}"
                what += f": {len(paths)} file(s)"
            click.echo(f"    {what}: {shown}")
    from mriscan.ingest import empty_class_message

    for name, n_files in report.empty_classes:
        click.echo(f"  warning: {empty_class_message(name, n_files)}")
    for note in report.notes:
        click.echo(f"  note: {note}")


@main.command()
@click.option("--store", "store_path", type=_FOLDER, default=DEFAULT_STORE, show_default=True)
def verify(store_path: Path) -> None:
    """Check every chunk, shape, label and pixel checksum of a store (exit 1 if any is bad)."""
    from mriscan.store import verify_store

    problems = verify_store(store_path)
    if problems:
        for p in problems:
            click.echo(f"BAD {p}", err=True)
        if all("lags the index" in p for p in problems):  # nothing lost: the zarr view lags
            raise click.ClickException(
                f"{store_path}: every committed sample is sound, but zarr-python and "
                f"TensorStore do not see all of them yet; run `mriscan migrate --store "
                f"{store_path}`."
            )
        raise click.ClickException(
            f"{len(problems)} problem(s) in {store_path}. Ingesting into this store again "
            "cannot repair them: its records say those files are already stored, and a stored "
            "slice is never rewritten. Ingest the raw folder(s) again into a new store "
            "(`mriscan ingest RAW_DIR --store NEW_PATH`), check it with `mriscan verify "
            "--store NEW_PATH`, and use it instead of this one."
        )
    click.echo(f"OK {store_path}: every sample readable and matching its checksum.")


@main.command()
@click.option("--store", "store_path", type=_FOLDER, default=DEFAULT_STORE, show_default=True)
def migrate(store_path: Path) -> None:
    """Convert a store written by an older mriscan (index format 1, 2 or 3; images one file per
    slice) to the current format (index format 4; images in shards of 256 slices), and bring
    the zarr arrays' shapes up to the committed count where a writer stopped after its commit."""
    from mriscan.store import FORMAT_VERSION, ImageStore, migrate_store

    with ImageStore.open(store_path) as st:
        per_slice = st.engine.name == "local chunk files"
        lag = st.zarr_lag()
    old = migrate_store(store_path)
    if old == FORMAT_VERSION and not per_slice and lag <= 0:
        click.echo(f"OK {store_path}: already index format {FORMAT_VERSION}; nothing to do.")
        return
    done = [f"index format {old} -> {FORMAT_VERSION}"] if old != FORMAT_VERSION else []
    if per_slice:
        done.append("images rewritten from one file per slice into shards")
    if lag > 0:
        done.append(
            f"zarr arrays grown by {lag} committed rows (a writer stopped after its commit)"
        )
    click.echo(f"OK {store_path}: {'; '.join(done)}.")


@main.command()
@click.option("--store", "store_path", type=_FOLDER, default=DEFAULT_STORE, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
def info(store_path: Path, as_json: bool) -> None:
    """Describe a store: samples per class, preprocessing, duplicate groups, codec, size."""
    from mriscan.store import ImageStore

    with ImageStore.open(store_path) as store:
        data = store.info()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"Store:      {data['location']}")
    counts = ", ".join(f"{k}: {v}" for k, v in data["classes"].items())
    click.echo(f"Samples:    {data['samples']} ({counts})")
    click.echo(f"Image size: {data['image_size']}×{data['image_size']} uint8")
    click.echo(
        f"Groups:     {data['duplicate_groups']} split groups (near-duplicates, patients, "
        f"volumes); {data.get('retired', 0)} retired samples; "
        f"{data['exact_duplicates_skipped']} exact duplicate files not stored twice"
    )
    click.echo(f"Preprocess: {data['preprocess']}")
    click.echo(f"Reader:     {_reader_text(data.get('reader'))}")
    layout = {
        "local zarr shards": f"images in shards of {data['chunks'][0]} slices",
        "local chunk files": "images one file per slice (older layout)",
    }.get(data["images_layout"], f"images read through zarr-python ({data['images_layout']})")
    click.echo(f"Format:     index format {data['format_version']}; {layout}")
    if data["migrate"]:
        click.echo(
            f"            written by an older mriscan: read as it is; `mriscan migrate --store "
            f"{store_path}` converts it (shards: far fewer files, faster reads)"
        )
    chunks = "×".join(str(c) for c in data["chunks"])
    click.echo(f"Codec:      {_codec_text(data['codec'])}; chunks {chunks}")
    ratio = data["bytes_on_disk"] / data["bytes_raw"] if data["bytes_raw"] else 0
    click.echo(
        f"On disk:    {_human_bytes(data['bytes_on_disk'])} "
        f"({ratio:.0%} of {_human_bytes(data['bytes_raw'])} raw)"
    )


def _reader_text(reader: dict | None) -> str:
    """How a store's scanner files were read, as the options that choose it."""
    from mriscan.scan_config import ReaderSettings, describe_setting

    if reader is None:
        return "not recorded (written by an older mriscan; the defaults are assumed)"
    flat = ReaderSettings.from_dict(reader).flat()
    return " ".join(describe_setting(n, v) for n, v in flat.items())


def _codec_text(codecs: list[dict]) -> str:
    """A zarr v3 codec chain (``Codec.to_dict()`` of each) in words, e.g. "sharding, inner
    chunks 1×128×128: Blosc-LZ4 level 9"."""
    parts = []
    for k, c in enumerate(codecs):
        name, cfg = c.get("name", "?"), c.get("configuration") or {}
        if name == "sharding_indexed":
            inner = "×".join(str(x) for x in cfg.get("chunk_shape", ()))
            parts.append(f"sharding, inner chunks {inner}: {_codec_text(list(cfg['codecs']))}")
        elif name == "bytes":
            if k == len(codecs) - 1:  # nothing after it: the bytes are stored as they are
                parts.append("uncompressed")
        elif name == "blosc":
            shuffle = cfg.get("shuffle", "noshuffle")
            parts.append(
                f"Blosc-{str(cfg.get('cname', '?')).upper()} level {cfg.get('clevel', '?')}"
                + ("" if shuffle == "noshuffle" else f" ({shuffle})")
            )
        elif name == "zstd":
            parts.append(f"Zstd level {cfg.get('level', '?')}")
        elif name == "gzip":
            parts.append(f"gzip level {cfg.get('level', '?')}")
        else:
            parts.append(name)
    return " → ".join(parts) or "uncompressed"


# (dotted TrainConfig setting, CLI flag) shared by train and cv
_TRAIN_OPTIONS = (
    ("fit.epochs", "--epochs"),
    ("optimizer.batch_size", "--batch-size"),
    ("image_size", "--image-size"),
    ("hardware.precision", "--precision"),
    ("hardware.strategy", "--strategy"),
    ("seed", "--seed"),
    ("runtime.pipeline", "--pipeline"),
    ("fit.select", "--select"),
    ("model.mirror", "--mirror"),
    ("model.convs_per_block", "--convs-per-block"),
    ("pretrain.phantoms", "--pretrain"),
    ("pretrain.epochs", "--pretrain-epochs"),
    ("fit.init_weights", "--init-weights"),
    ("fit.implant", "--implant"),
    ("optimizer.learning_rate", "--learning-rate"),
    ("split.val_fraction", "--val-fraction"),
    ("fit.threshold_rule", "--threshold-rule"),
    ("task.class_map", "--class-map"),
    ("task.positive", "--positive"),
    ("task.healthy", "--healthy"),
)


def _train_options(f: Callable) -> Callable:
    """Options shared by train and cv: --store, --out and the ``_TRAIN_OPTIONS`` settings."""
    opts = [
        click.option(
            "--store",
            "store_path",
            type=_FOLDER,
            default=None,
            help=f"Store to ingest DATA into [default: {DEFAULT_STORE}, or {PHANTOM_STORE} "
            "for phantoms].",
        ),
        click.option(
            "--out", type=_FOLDER, default=DEFAULT_OUT, show_default=True, help="Artifacts folder."
        ),
        *(config_option(TrainConfig, path, flag) for path, flag in _TRAIN_OPTIONS),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _resolve_data(
    data: Path | None, store_path: Path | None, overrides: dict[str, Any]
) -> tuple[Path, Path | None]:
    """DATA or the embedded default (data/raw, else generated phantoms) and its store.

    With no DATA and ``--store`` naming an existing store, that store is the data (phantoms
    were ingested into it, or refused as another source, before); naming anything else is a
    usage error. On phantom data the phantom pre-training is switched off in ``overrides``:
    more phantoms add nothing there.
    """
    if data is None and store_path is not None:
        from mriscan.sources import is_store

        if not is_store(store_path):  # the default data would be ingested into it: a typo
            # in --store would train on phantoms and report it as a success (tester30)
            command = click.get_current_context().info_name
            if not store_path.exists():
                what, fix = "does not exist", f"`mriscan {command} DATA --store {store_path}`"
            else:  # class folders given as --store, likely: they are DATA (tester31)
                what = "is not a store"
                fix = f"`mriscan {command} {store_path} --store NEW_STORE` if it holds the data"
            raise click.UsageError(
                f"--store {store_path} {what}, and no DATA was given. Give the data to ingest "
                f"({fix}), or drop --store to use data/raw/ (or phantoms)."
            )
        click.echo(f"No DATA: using the store {store_path}.", err=True)
        return store_path, store_path
    if data is not None and store_path is not None:
        from mriscan.sources import is_store

        if is_store(data) and Path(store_path).resolve() != Path(data).resolve():
            click.secho(  # said, not silently dropped (tester30)
                f"DATA {data} is a store: --store {store_path} is not used.",
                fg="yellow",
                err=True,
            )
    if data is None:
        from mriscan.synth import default_raw_data

        data = default_raw_data(DEFAULT_RAW, log=lambda m: click.secho(m, fg="yellow", err=True))
        if data.name == "synthetic" and store_path is None:
            store_path = PHANTOM_STORE
    if data.name == "synthetic" and overrides.get("pretrain.phantoms", 1):
        click.secho("Phantom data: phantom pre-training skipped.", fg="yellow", err=True)
        overrides["pretrain.phantoms"] = 0
    return data, store_path


def _check_store(data: Path, image_size: int | None, scan: Any) -> None:
    """The checks ``open_or_ingest`` makes of a store given as DATA (its slices' size, how
    they were read), before TensorFlow is loaded: a wrong option is said in a second, not
    after the framework's start-up (tester30)."""
    from mriscan.ingest import check_reading_options
    from mriscan.sources import check_image_size, is_store
    from mriscan.store import ImageStore

    if is_store(data):
        with ImageStore.open(data) as store:
            check_image_size(store, image_size)
            check_reading_options(store, data, scan)


@main.command()
@click.argument("data", type=_EXISTING, required=False)
@_train_options
@config_option(TrainConfig, "split.test_fraction", "--test-fraction")
@config_option(TrainConfig, "runtime.verbose", "--verbose-fit")
@_scan_options
@click.pass_context
def train(
    ctx: click.Context,
    data: Path | None,
    store_path: Path | None,
    out: Path,
    **options: Any,
) -> None:
    """Train the classifier on DATA and write artifacts.

    DATA: class folders (JPEG/PNG, DICOM files and series, NIfTI volumes), a CSV
    manifest (path,label[,group] as its header; paths relative to it), or a store.

    With no DATA: the store --store names (it must exist), else data/raw/<class>/ if
    present, else synthetic phantoms generated into data/raw/synthetic/ once. Split: stratified,
    duplicate-group aware; the kept model (--select) is evaluated once on the held-out test
    split, with the decision threshold chosen by --threshold-rule on the training and
    validation slices (never the test split).
    """
    scan = _read_options(options)
    overrides = _typed_overrides(ctx, options)
    data, store_path = _resolve_data(data, store_path, overrides)
    cfg = _build_typed(ctx, _holdout_checked, overrides, _typed_params(ctx, overrides))
    _check_store(data, cfg.image_size, scan)
    click.echo("Loading TensorFlow/Keras...", err=True)
    _import_keras()
    from mriscan.training.workflow import train as run_train

    click.echo(f"Training on {data} → {out}/", err=True)
    result = run_train(data, cfg, out=out, store_path=store_path, read_options=scan)
    click.echo(f"\n{result.hardware.describe()}")
    shown = result.metrics.get("test") or result.metrics["validation"]
    rule = result.metrics.get("protocol", {}).get("threshold_rule")
    _print_metrics("Test split", {**shown, "threshold_rule": rule})
    click.echo(
        f"Artifacts in {out}/: models/best_model.keras, history.json, metrics.json, "
        f"split.json, plots/ ({result.seconds:.0f}s)"
    )


def _ci(m: dict, key: str) -> str:
    """`` [low, high]`` of ``m["ci95"][key]``, `` [CI undefined: N group(s)]`` when the
    metric is defined but its CI rests on fewer than 2 groups (``ci95_groups``), or ""."""
    ci = m.get("ci95", {})
    if key not in ci:
        return ""
    n = m.get("ci95_groups", {}).get(key)
    value = m.get(key)
    defined = isinstance(value, float) and value == value
    if defined and n is not None and n < 2:
        return f" [CI undefined: {n} group(s)]"
    return f" [{_num(ci[key][0])}, {_num(ci[key][1])}]"


def _num(value: Any) -> str:
    """A metric with 3 decimals, or "undefined" (NaN / None: e.g. a class absent)."""
    if value is None or (isinstance(value, float) and value != value):
        return "undefined"
    return f"{value:.3f}"


_LABELS = {
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy",
    "macro_f1": "macro-F1",
    "roc_auc": "ROC AUC",
    "macro_roc_auc": "macro ROC AUC (one-vs-rest)",
    "sensitivity": "sensitivity",
    "specificity": "specificity",
}


def _print_levels(result: dict) -> None:
    """evaluate's per-series and per-patient sections (``mriscan.evaluate.grouped_levels``):
    the pooling rule once, then each level's metrics, or one line saying why it has none."""

    def section(level: str, s: dict) -> list[str]:
        if s["n"]:
            _print_metrics(f"Per {level}: {s['units']} → {s['predictions']}", s)
        return [f"undefined: {_by_reason(s['undefined'])}"] if s["undefined"] else []

    _print_unit_levels(result, "Per unit", section)


def _print_unit_levels(result: dict, intro: str, section: Callable[[str, dict], list]) -> None:
    """The per-series and per-patient sections of ``result`` (evaluate's or cv's): the pooling
    rule once (after ``intro``), then per level ``section(level, its dict)`` (which prints the
    metrics and returns further notes) and the notes every level has, or one line saying why
    the data have no such level."""
    sections = {k: result[f"per_{k}"] for k in ("series", "patient") if f"per_{k}" in result}
    shown = [s for s in sections.values() if s["available"]]
    if shown:
        click.echo(f"{intro}: {shown[0]['rule']}.")
    for level, s in sections.items():
        if not s["available"]:
            click.echo(f"  {s['why']}")
            continue
        more = section(level, s)
        notes = []
        if s.get("labelled_by_tumor_slices"):
            notes.append(
                f"{s['labelled_by_tumor_slices']} unit(s) of healthy and tumor slices: "
                "labelled with their tumor class"
            )
        if s["mixed_labels"]:
            notes.append(
                f"{s['mixed_labels']} unit(s) left out: their slices carry more than one tumor "
                "class"
            )
        if s["slices_without_unit"]:
            notes.append(f"{s['slices_without_unit']} slice(s) belong to no {level}")
        for note in notes + more:
            click.echo(f"  ({level}) {note}")


def _print_metrics(title: str, m: dict) -> None:
    """Print the headline metrics, per-class precision/recall/F1 and the confusion matrix."""
    from mriscan.metrics import ARGMAX_RULE

    thr = m.get("threshold")
    rule = ARGMAX_RULE
    if isinstance(thr, float) and thr == thr:
        rule = f"threshold {_threshold_text(thr)}" + (
            f": {m['threshold_rule']}" if m.get("threshold_rule") else ""
        )
    click.echo(f"{title} (n={m['n']}, {rule}):")
    from mriscan.evaluate import HEADLINE_METRICS

    keys = [k for k in HEADLINE_METRICS if k in m]
    parts = [f"{_LABELS[k]} {_num(m[k])}{_ci(m, k)}" for k in keys]
    click.echo("  " + "   ".join(parts))
    for name, pc in m["per_class"].items():
        click.echo(
            f"  {name:>10}: precision {_num(pc['precision'])}  recall {_num(pc['recall'])}  "
            f"F1 {_num(pc['f1'])}  (n={pc['support']})"
        )
    absent = [n for n, pc in m["per_class"].items() if not pc["support"]]
    present = [n for n, pc in m["per_class"].items() if pc["support"]]
    macro = m.get("macro_f1")
    # an undefined macro-F1 is over no class: the note would contradict its "undefined"
    if absent and present and isinstance(macro, float) and macro == macro:
        means = "macro-F1" if "sensitivity" in m else "macro-F1 and balanced accuracy"
        click.echo(
            f"  ({means} over the classes present: {', '.join(present)}; "
            f"{', '.join(absent)} without a slice, left out)"
        )
    names = m["class_names"]
    cm = m["confusion_matrix"]
    click.echo(f"  confusion (rows true, cols predicted {names}): {cm}")


@main.command()
@click.argument("out_dir", type=_PATH)
@click.option("--count", type=int, default=400, show_default=True)
@click.option("--tumor-fraction", type=float, default=0.6, show_default=True)
@click.option(
    "--size-range",
    type=(int, int),
    default=(150, 1000),
    show_default=True,
    help="Min and max longer side in pixels.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--workers", type=int, default=None, help="Threads [default: CPU cores].")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["images", "dicom", "nifti"]),
    default="images",
    show_default=True,
    help="images: PNG/JPEG slices (--count, --size-range); dicom: DICOM series of made-up "
    "patients; nifti: NIfTI volumes in several orientations (--patients, "
    "--series-per-patient, --slices, --canvas). Scanner phantoms are axial stacks of "
    "phantom slices: read NIfTI ones in the axial plane (the default) to train on them; "
    "their coronal and sagittal slices look alike across patients, so near-duplicate "
    "links join most of them into a few split groups.",
)
@click.option(
    "--patients",
    type=int,
    default=8,
    show_default=True,
    help="dicom/nifti: made-up patients (--tumor-fraction of them in yes/).",
)
@click.option(
    "--series-per-patient",
    type=int,
    default=2,
    show_default=True,
    help="dicom/nifti: series (NIfTI: volumes) per patient.",
)
@click.option("--slices", type=int, default=9, show_default=True, help="dicom/nifti: per series.")
@click.option(
    "--canvas", type=int, default=64, show_default=True, help="dicom/nifti: pixels per side."
)
def synth(
    out_dir: Path,
    count: int,
    tumor_fraction: float,
    size_range: tuple[int, int],
    seed: int,
    workers: int | None,
    fmt: str,
    patients: int,
    series_per_patient: int,
    slices: int,
    canvas: int,
) -> None:
    """Generate synthetic phantoms into OUT_DIR/yes and OUT_DIR/no: PNG/JPEG slices, or (with
    --format dicom|nifti, ``mriscan.synth_scanner.write_scanner_set``) DICOM series of made-up
    patients (MONOCHROME1 and 2, with and without a window, several series per patient) or
    NIfTI volumes in several voxel orders. Seeded by --seed. OUT_DIR must be new or empty."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        # writing into an earlier set would overwrite some of its files and keep the rest:
        # one class folder (even one series) mixing two seeds' made-up patients
        raise click.UsageError(
            f"{display_path(out_dir)} is not an empty folder: synth writes a new set there and "
            "would mix it with what is there. Give a new folder, or delete this one first.",
        )
    if fmt != "images":
        from mriscan.synth_scanner import write_scanner_set

        counts = write_scanner_set(
            out_dir,
            fmt=fmt,
            patients=patients,
            tumor_fraction=tumor_fraction,
            series_per_patient=series_per_patient,
            n_slices=slices,
            canvas=canvas,
            seed=seed,
        )
        if fmt == "dicom":
            click.echo(
                f"Wrote {counts['yes']} yes/ and {counts['no']} no/ made-up patients "
                f"({counts['series']} DICOM series, {counts['slices']} slices) to {out_dir}/"
            )
        else:
            click.echo(
                f"Wrote {counts['yes']} yes/ and {counts['no']} no/ NIfTI volumes "
                f"({counts['slices']} slices) to {out_dir}/"
            )
        return
    from mriscan.synth import SynthConfig, synthesize

    cfg = SynthConfig(count=count, tumor_fraction=tumor_fraction, size_range=size_range, seed=seed)
    with _progress("generating") as progress:
        counts = synthesize(out_dir, cfg, workers=workers, progress=progress)
    click.echo(f"Wrote {counts['yes']} yes/ and {counts['no']} no/ phantom slices to {out_dir}/")


@main.command()
@click.argument("data", type=_PATH, required=False)
@click.option("--model", "model_path", type=_EXISTING, default=DEFAULT_MODEL, show_default=True)
@click.option(
    "--store",
    "store_path",
    type=_FOLDER,
    default=None,
    help="Evaluate on this store instead of DATA.",
)
@click.option(
    "--split",
    type=click.Choice(["test", "val", "train", "all"]),  # = mriscan.evaluate.SPLITS (tested)
    default=None,
    help="Part of the model's training store to score (recorded in split.json at training) "
    "[default: test on the training store; all of other data, which is always scored whole].",
)
@click.option(
    "--out",
    type=_FOLDER,
    default=None,
    help="Where evaluation/ is written [default: the model's artifacts folder].",
)
@click.option(
    "--class-map",
    "cfg__task__class_map",
    type=_ClassMap(min_targets=1),
    default=(),
    help="Map DATA's classes onto the model's: 'yes=glioma,meningioma,pituitary;no=notumor' or "
    "@FILE [default: by name, else tumor vs no tumor]; one target scores one class (e.g. "
    "'yes=glioma,meningioma': the sensitivity on tumor slices alone).",
)
@click.option(
    "--keep-duplicates",
    is_flag=True,
    help="Keep and score slices of other data that near-duplicate a training slice of the "
    "model, and slices of its training or validation patients (both removed and counted by "
    "default); they are counted (metrics.json: kept), listed (own_data_kept.csv) and a "
    "warning says when they are most of the data.",
)
@_show_paths_option(slices=False)
@_scan_options
def evaluate(
    data: Path | None,
    model_path: Path,
    store_path: Path | None,
    split: str | None,
    out: Path | None,
    cfg__task__class_map: tuple,
    keep_duplicates: bool,
    show_paths: bool,
    **options: Any,
) -> None:
    """Metrics and plots of a trained model on a split of its store, or on any labelled
    folder, CSV manifest (path,label[,group]) or store (another collection: near-duplicates
    of its training slices removed).

    Writes evaluation/metrics.json (with 95% CIs over duplicate groups), confusion_matrix.png,
    roc.png (two classes), predictions.csv and near_duplicates_removed.csv. DICOM series,
    NIfTI volumes and manifest groups are also scored as units (per_series in metrics.json,
    series_predictions.csv), and patients when the data have Patient IDs (per_patient,
    patient_predictions.csv): slice probabilities pooled as `predict` pools them (mean of the
    top-3 per class); units are named by keyed hash only. Files of a folder
    that cannot be read are listed (on screen, in metrics.json and predictions.csv) and left
    out of n; in a folder holding DICOM/NIfTI files they are named by pseudonym, as `predict`
    names them, unless --show-paths.

    A metric undefined on the data is printed "undefined", written as null and listed with
    its reason under "undefined" in metrics.json, never counted as 0: a class with no slice
    has recall and F1 undefined and is left out of macro-F1 (and, K classes, of balanced
    accuracy: both are means over the classes present); a class never predicted has precision
    undefined; two classes: balanced accuracy, ROC AUC, sensitivity or specificity are
    undefined without a slice of the class they need. The command exits 1 when a headline
    metric of the slices (accuracy, balanced accuracy, macro-F1, ROC AUC, sensitivity,
    specificity) is undefined; undefined per-class values alone are listed but exit 0.

    DATA may hold one class (a tumor-only or healthy-only collection, or a --class-map that
    leaves one class): a line says what was computed (sensitivity and recall per data class
    for tumor slices; specificity and the false-positive rate for healthy ones) and why the
    rest is undefined, and the command exits 1, as for any undefined headline metric.
    """
    _import_keras()
    from mriscan.evaluate import evaluate as run_evaluate

    if data is not None and store_path is not None:
        raise click.UsageError(
            f"Give DATA or --store, not both (got DATA {data} and --store {store_path}): DATA "
            "is a folder, manifest or store to evaluate on, --store a store."
        )
    result = run_evaluate(
        model_path,
        store_path or data,
        split=split,
        out=out,
        class_map=cfg__task__class_map,
        remove_duplicates=not keep_duplicates,
        read_options=_read_options(options),
        show_paths=show_paths,
    )
    click.echo(f"{result['data']} [{result['split']}]: {result['comparison']}")
    dup = result["near_duplicates_removed"]
    if dup["count"]:
        click.echo(
            f"  removed {dup['count']} near-duplicates of training slices "
            f"(thumbnail correlation > {dup['threshold']}): {dup['per_class']}"
        )
    same = result["same_patient_removed"]
    if same["count"]:
        click.echo(
            f"  removed {same['count']} slices of {same['patients']} patient(s) the model was "
            f"trained or validated on (same keyed Patient ID): {same['per_class']} "
            "(same_patient_removed.csv)"
        )
    elif same["why_not"]:
        click.echo(f"  cannot check for training patients: {same['why_not']}")
    if dup.get("kept"):
        click.echo(f"  scored {dup['kept']} near-duplicates of training slices (--keep-duplicates)")
    if same.get("kept"):
        click.echo(
            f"  scored {same['kept']} other slices of patients the model was trained or "
            "validated on (--keep-duplicates)"
        )
    copies = result["exact_duplicates"]
    if copies["count"]:
        gone = copies.get("removed_with_original", 0)
        with_it = f", {gone} of them removed with the file they copy" if gone else ""
        click.echo(
            f"  {copies['count']} exact-duplicate file(s) (same bytes as another file) scored "
            f"once and not counted in n: {copies['per_class']}{with_it} (exact_duplicates.csv)"
        )
    _print_metrics("Evaluation", result)
    if result["unreadable"]:
        click.echo(
            f"  {result['n_unreadable']} of {result['n_files']} file(s) could not be read "
            "and are not counted in n:",
            err=True,
        )
        for u in result["unreadable"]:
            click.echo(f"    {u['path']} ({u['label']}): {one_line(u['error'])}", err=True)
        if not show_paths and any(u.get("level") == "file" for u in result["unreadable"]):
            click.echo(_PSEUDONYM_HINT, err=True)
    recalls = ", ".join(
        f"{k} {_num(v['recall'])} (n={v['n']})" for k, v in result["recall_per_data_class"].items()
    )
    click.echo(f"  recall per data class: {recalls}")
    from mriscan.evaluate import failing

    fatal = failing(result["undefined"])
    minor = {k: v for k, v in result["undefined"].items() if k not in fatal}
    if minor:  # the slices' per-class values: listed (metrics.json too), not a failure
        click.echo(f"  (slices) undefined, left out of every mean: {_by_reason(minor)}")
    _print_levels(result)
    one = result.get("one_class")
    if one:
        click.echo(_one_class_line(result, one))
    if fatal:
        # only files that could add a slice of a class without one can help (not, e.g., a
        # tumor-only set's unreadable tumor file); removing a file never adds a slice
        helps = result.get("unreadable_of_absent_classes", 0)
        fix = f"fix the {helps} unreadable file(s) of a class without a slice, or " if helps else ""
        if emptied := result.get("classes_emptied_by_removal"):
            fix = (
                f"keep the removed slices of {', '.join(emptied)} (--keep-duplicates: they are "
                "near-duplicates or patients of the model's training data, so the score would "
                "flatter it), or " + fix
            )
        raise click.ClickException(
            f"Undefined on these data: {_by_reason(fatal)}. To score them"
            + (" too" if one else "")
            + f", {fix}evaluate on data holding a slice of every class."
        )


def _one_class_line(result: dict, one: dict) -> str:
    """evaluate's line for data of one class (``mriscan.evaluate.one_class_summary``): what
    was computed (with the false-positive rate of healthy slices), and why the rest is not."""
    parts = [f"{_LABELS[k]} {_num(result[k])}{_ci(result, k)}" for k in one["defined"]]
    if "false_positive_rate" in one:
        lo, hi = one["false_positive_rate_ci95"]
        n = result.get("ci95_groups", {}).get("specificity")
        fpr_ci = (
            f"CI undefined: {n} group(s)" if n is not None and n < 2 else f"{_num(lo)}, {_num(hi)}"
        )
        parts.append(
            f"false-positive rate {_num(one['false_positive_rate'])} [{fpr_ci}] "
            "(1 − specificity: the share of these healthy slices called a tumor)"
        )
    parts.append("recall per data class")
    rest = ", ".join(_LABELS[k] for k in one["undefined"])
    tail = (
        f"; {rest} need slices of another class and are undefined, so the exit status is 1"
        if one["undefined"]
        else ""
    )
    return f"One class in these data ({_one_class_names(one)}): computed {'; '.join(parts)}{tail}."


def _one_class_names(one: dict) -> str:
    """The one class of ``_one_class_line``: ``yes`` when data, scored and model class agree,
    else ``notumor, scored as the model's no`` (the data's classes, then the model's)."""
    data, model = one.get("data_classes") or [], one.get("model_classes") or []
    if data == [one["class"]] and model in ([], [one["class"]]):
        return one["class"]
    shown = " + ".join(data) or one["class"]
    if not model:
        return f"{shown}, scored as {one['class']}"
    theirs = ", ".join(model[:-1]) + (" or " if len(model) > 1 else "") + model[-1]
    named = "" if model == [one["class"]] else f"{one['class']}: "
    return f"{shown}, scored as {named}the model's {theirs}"


def _by_reason(undefined: dict[str, str]) -> str:
    """'recall of 'no', F1 of 'no': no readable slice of class 'no'; ...': an ``undefined``
    dict (metric -> why) with the metrics of one reason named together."""
    by: dict[str, list[str]] = {}
    for k, v in undefined.items():
        by.setdefault(v, []).append(k)
    return "; ".join(f"{', '.join(ks)}: {v}" for v, ks in by.items())


@main.command()
@click.argument("data", type=_EXISTING, required=False)
@_train_options
@config_option(CVConfig, "folds", "--folds")
@config_option(CVConfig, "repeats", "--repeats")
@_scan_options
@click.pass_context
def cv(
    ctx: click.Context,
    data: Path | None,
    store_path: Path | None,
    out: Path,
    **options: Any,
) -> None:
    """Cross-validate: stratified k-fold with every duplicate group inside one fold.

    DATA: class folders, a CSV manifest (path,label[,group]) or a store, as for train.

    Trains one model per fold (same defaults as train) and writes <out>/cv/: metrics.json
    (mean ± std, bootstrap 95% CI, per fold; each fold's slices per class, a test part whose
    class mix strays from the whole set's flagged), oof_predictions.csv, roc.png,
    confusion_matrix.png. DICOM series, NIfTI volumes and manifest groups, and patients when
    the data have Patient IDs, are scored too, as `evaluate` scores them: each fold's test
    slices pooled per unit (mean of the top-3 per class), then mean ± std over folds
    (per_series / per_patient in metrics.json, oof_series_predictions.csv /
    oof_patient_predictions.csv; units named by keyed hash only). A metric undefined on a fold
    (no unit of a class in it) is printed "undefined" and left out of the mean; metrics.json
    counts the folds that define each metric (n_defined, per class too), and a std from fewer
    than two folds is undefined (null), not 0.
    """
    scan = _read_options(options)
    overrides = _typed_overrides(ctx, options)
    folds = {k: overrides.pop(k) for k in ("folds", "repeats") if k in overrides}
    data, store_path = _resolve_data(data, store_path, overrides)
    # one build, so that cv's own check of --val-fraction (CVConfig) names the option too
    changes = {"runtime.verbose": "line", **overrides, **folds}
    cfg = _build_typed(ctx, _cv_config, changes, _typed_params(ctx, changes))
    _check_store(data, cfg.train.image_size, scan)
    _import_keras()
    from mriscan.training.crossval import cross_validate

    click.echo(f"{cfg.folds}-fold CV × {cfg.repeats} on {data} → {out}/cv/", err=True)
    s = cross_validate(data, cfg, out=out, store_path=store_path, read_options=scan)
    p = s["protocol"]
    click.echo(
        f"\n{p['folds']}-fold CV × {p['repeats']}, {p['samples']} slices in "
        f"{p['duplicate_groups']} duplicate groups ({s['seconds'] / 60:.1f} min):"
    )
    click.echo(f"  task: {s['task']}")
    click.echo(f"  decision: {p['threshold_rule']}")
    _print_fold_summary(s, s["headline"])
    _print_fold_mix(s)
    types = s["pooled"].get("tumor_types_only")
    tvh = s["pooled"].get("tumor_vs_healthy")
    if tvh:
        click.echo(
            f"  tumor vs no tumor (pooled, {tvh['rule']}): accuracy "
            f"{_num(tvh['accuracy'])}, ROC AUC {_num(tvh['roc_auc'])}, sensitivity "
            f"{_num(tvh['sensitivity'])}, specificity {_num(tvh['specificity'])}"
        )
    if types:
        click.echo(
            f"  tumor types only (pooled, n={types['n']}, {types['rule']}): accuracy "
            f"{_num(types['accuracy'])}"
        )
    if by_source := s["pooled"].get("recall_per_data_class"):
        recalls = ", ".join(f"{k} {_num(v['recall'])} (n={v['n']})" for k, v in by_source.items())
        click.echo(f"  recall per data class (pooled): {recalls}")
    _print_cv_levels(s)
    click.echo(f"Written to {out}/cv/")


def _holdout_checked(changes: dict[str, Any]) -> TrainConfig:
    """train's config: ``TrainConfig`` with ``changes``, its validation and test shares
    leaving a training part (``SplitConfig.check_holdout``)."""
    cfg = override(TrainConfig(), changes)
    cfg.split.check_holdout()
    return cfg


def _cv_config(changes: dict[str, Any]) -> CVConfig:
    """cv's config: ``changes`` to ``CVConfig``'s own settings (folds, repeats) and to its
    ``TrainConfig`` (the rest); no test share is checked, cv holds out none."""
    own = {k: v for k, v in changes.items() if k in ("folds", "repeats")}
    if "split.val_fraction" in changes:  # cv's range named, not only SplitConfig's (0, 1)
        CVConfig.check_val_fraction(changes["split.val_fraction"])
    train = override(TrainConfig(), {k: v for k, v in changes.items() if k not in own})
    return CVConfig(train=train, **own)


def _print_fold_summary(s: dict, keys: list[str]) -> None:
    """One line per headline metric of a CV summary: mean ± std, 95% CI, the folds' values."""
    for key in keys:
        m = s[key]
        folds_txt = " ".join(_num(v) for v in m["per_fold"])
        click.echo(
            f"  {key:<17} {_num(m['mean'])} ± {_num(m['std'])}  95% CI [{_num(m['ci95'][0])}, "
            f"{_num(m['ci95'][1])}]  folds: {folds_txt}"
        )


def _print_fold_mix(s: dict) -> None:
    """Each fold's test slices per class, the split groups they rest on
    (``mriscan.splits.fold_class_mix``) and the fold's recall of the class, a skewed or missing
    class marked "*": a fold's numbers are read against the mix they were measured on."""
    from mriscan.splits import MIX_SKEW_POINTS

    mix = s.get("fold_class_mix") or []
    if not mix:  # a summary without it (written before mriscan recorded the folds' mix)
        return
    click.echo(
        f"  test slices per fold (class share, split groups, the fold's recall; * a share more "
        f"than {MIX_SKEW_POINTS:g} points from the whole set's, or a class missing):"
    )
    for m, fold in zip(mix, s["per_fold"], strict=True):
        name = f"fold {m['fold'] + 1}" + (
            f", repeat {m['repeat'] + 1}" if s["protocol"]["repeats"] > 1 else ""
        )
        # recall per class beside the mix: a weak fold's weak class shows here
        parts = [
            f"{c} {n} ({100 * m['test_share'][c]:.0f}%, {_groups(m['test_groups'][c])}, "
            f"recall {_num(fold['per_class'][c]['recall'])})" + ("*" if c in m["skewed"] else "")
            for c, n in m["test"].items()
        ]
        click.echo(f"    {name}: {', '.join(parts)}")


def _groups(n: int) -> str:
    """ "1 group" / "5 groups"."""
    return f"{n} group" + ("" if n == 1 else "s")


def _print_cv_levels(s: dict) -> None:
    """cv's per-series and per-patient summaries (``mriscan.training.crossval.summarize_levels``):
    the pooling rule once, then each level's metrics over folds and what was undefined where,
    or one line saying why the data have no such level."""

    def section(level: str, m: dict) -> list[str]:
        click.echo(
            f"Per {level}: {m['units']} ({m['n']} units over the folds) → {m['predictions']}"
        )
        _print_fold_summary(m, s["headline"])
        notes = []
        for f in m["per_fold"]:
            where = f"repeat {f['repeat'] + 1}, fold {f['fold'] + 1}"
            if not f["available"]:
                notes.append(f"{where}: {f['why']}")
            elif f["undefined"]:
                notes.append(
                    f"{where}: undefined, left out of the mean: {_by_reason(f['undefined'])}"
                )
        return notes

    _print_unit_levels(s, "Per unit, in each fold", section)


def _label_rule(model_path: Path, threshold: float | None) -> tuple[str, float | None]:
    """How ``predict`` labels a slice, in words: the positive class at the threshold in use
    (the model card's, with the rule that chose it, or the one given), or the most probable;
    and that threshold (None for a K-class model)."""
    from mriscan.artifacts import ModelCard
    from mriscan.inference import check_threshold
    from mriscan.metrics import ARGMAX_RULE

    card = ModelCard.load(model_path)
    thr = check_threshold(card, threshold)
    if thr is None:
        return f"the {ARGMAX_RULE}", None
    source = "given by --threshold" if threshold is not None else card.threshold_rule
    said = f"{card.class_names[1]} at P ≥ {_threshold_text(thr)}"
    return (f"{said} ({source})" if source else said), thr


#: the most decimals a threshold, or a probability beside it, is printed with (tester32: a P
#: of 0.5511423 against a threshold of 0.5511425 read "0.551142" both at 6)
_MAX_DIGITS = 9


def _threshold_text(thr: float) -> str:
    """A threshold to ``_MAX_DIGITS`` decimals, trailing zeros dropped but 3 kept ("0.5" reads
    "0.500", 0.58234127 "0.58234127"): not rounded to 3, where a row's P shown with more
    digits could read as on the wrong side of it (tester31: "yes at P ≥ 0.736" above a row
    "P = 0.73587, yes" for --threshold 0.73585), nor where 3 would read 0 or 1."""
    if thr and abs(thr) < 1e-3:  # 6 decimals would cut its digits: 1.23e-05
        return f"{thr:.6g}"
    text = f"{thr:.{_MAX_DIGITS}f}".rstrip("0")
    return text if len(text.split(".")[1]) >= 3 else f"{thr:.3f}"


def _unit_probability(row: dict, thr: float | None) -> str:
    """What a series/volume line of ``predict`` shows before its label: two classes, P of the
    positive class, with as many decimals (3 to 6) as it takes not to print the same digits as
    the threshold it was compared with; K classes, P of the label's class and, with a healthy
    class, the tumor probability (1 − P(healthy))."""
    if "probability" in row:  # two classes
        p = row["probability"]
        if p is None:
            return ""
        digits = 3
        while thr is not None and digits < _MAX_DIGITS and f"{p:.{digits}f}" == f"{thr:.{digits}f}":
            digits += 1
        return f"P = {p:.{digits}f}, "
    parts = []
    if (p := row.get(f"p_{row['label']}")) is not None:
        parts.append(f"P({row['label']}) = {_num(p)}")
    if row.get("tumor_probability") is not None:
        parts.append(f"tumor probability {_num(row['tumor_probability'])}")
    return "".join(f"{x}, " for x in parts)


def _not_scored(rows: list[dict[str, Any]]) -> str:
    """The rows of ``predict`` with an error, counted apart (``scan_predict.row_outcome``):
    "2 unreadable, 5 copies of a scored instance (not scored again), 1 not an input"; the
    unreadable always, the others when there are any. Copies and files that are no input
    were read or looked at as they should be: counting them as unreadable hid the real
    read errors among them."""
    from mriscan.scan_predict import row_outcome

    n = {"unreadable": 0, "copy": 0, "not input": 0}
    for r in rows:
        if (kind := row_outcome(r)) in n:
            n[kind] += 1
    parts = [f"{n['unreadable']} unreadable"]
    if n["copy"]:
        parts.append(
            f"{n['copy']} cop{'y' if n['copy'] == 1 else 'ies'} of a scored instance (not scored "
            "again)"
        )
    if n["not input"]:
        parts.append(f"{n['not input']} not {'an input' if n['not input'] == 1 else 'inputs'}")
    return ", ".join(parts)


@main.command()
@click.argument("model_path", type=_EXISTING)
@click.argument("inputs", type=_PATH, nargs=-1, required=True)
@click.option(
    "--output",
    type=_FILE,
    default=Path("predictions.csv"),
    show_default=True,
    help="A .csv, .jsonl (JSON Lines) or .json file. CSV and JSON Lines are written as each "
    "batch finishes, so a crash keeps the rows done so far; .json is written at the end, its "
    "rows collecting meanwhile as JSON Lines in <output>.partial.",
)
@click.option(
    "--threshold",
    type=_PROBABILITY,
    default=None,
    help="Decision threshold in [0, 1] [default: the one stored with the model].",
)
@click.option("--batch-size", type=_POSITIVE, default=32, show_default=True)
@click.option("--workers", type=_POSITIVE, default=None, help="Decoding threads [default: cores].")
@_show_paths_option()
@click.option(
    "--engine",
    type=click.Choice(["auto", "keras", "onnx"]),
    default="auto",
    show_default=True,
    help="What runs the model: keras (TensorFlow), onnx (ONNX Runtime on MODEL's export "
    "X.onnx from `mriscan export-onnx`: no TensorFlow import, starts seconds sooner), auto "
    "(onnx when X.onnx exists beside the model).",
)
@click.option(
    "--dicom-out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Also write each DICOM series' finding (label, per-class probabilities, pooling "
    "rule, model) as a DICOM Structured Report (TID 1500, Comprehensive SR) into this folder, "
    "in the source's study with its instances as evidence, named <SOP Instance UID>.dcm. "
    "These files carry the source's patient module (name, ID, birth date): keep them where the "
    "source images may be kept. JPEG/PNG and NIfTI inputs get none (listed); --output is "
    "unchanged.",
)
@_scan_options
def predict(
    model_path: Path,
    inputs: tuple[Path, ...],
    output: Path,
    threshold: float | None,
    batch_size: int,
    workers: int | None,
    show_paths: bool,
    engine: str,
    dicom_out: Path | None,
    **options: Any,
) -> None:
    """Predict image files, DICOM series / files and NIfTI volumes, or folders of them.

    Columns: path, label, p_<class> for each class, probability (two classes: the positive
    class's) or tumor_probability and is_tumor (more classes with a healthy one), error.
    label: two classes, the positive class when probability >= the threshold; more, the most
    probable class. tumor_probability = 1 - P(healthy) is a score; is_tumor (yes/no) is the
    label's tumor vs no tumor call, the one `evaluate` scores: with no majority class, label
    notumor (is_tumor no) can come with tumor_probability above 0.5. DICOM/NIfTI add level,
    unit, slices, aggregate. JPEG/PNG: one row each. DICOM/NIfTI: one row per slice (level
    slice) and one per series or volume (level series/volume) whose probabilities are the mean
    of the top-3 slice probabilities, slices with no anatomy (uniform or noise) left out unless
    all are (the
    `aggregate` column says so). Bad files get their
    reason in `error` and do not stop the rest. Folders are searched recursively; hidden files
    and folders below them are skipped. File names that are not valid UTF-8 are written with
    \\xNN escapes for the odd bytes. Rows are written as they are made, JPEG/PNG batch by batch,
    then DICOM/NIfTI series by series as each is scored (.csv, .jsonl; .json at the end,
    .json.partial meanwhile); a progress bar over all files (and the DICOM headers, read
    first to group the files into series) is drawn on stderr.
    """
    from mriscan.aggregate import RULE
    from mriscan.onnx_engine import onnx_path
    from mriscan.predict import predict as run_predict

    if engine == "keras" or (engine == "auto" and not onnx_path(model_path).is_file()):
        _import_keras()  # ONNX Runtime needs no Keras

    with _progress("predicting") as progress:
        rows = run_predict(
            model_path,
            inputs,
            output=output,
            threshold=threshold,
            batch_size=batch_size,
            workers=workers,
            progress=progress,
            show_paths=show_paths,
            engine=engine,
            read_options=_read_options(options),
            dicom_out=dicom_out,
        )
    units = [r for r in rows if r.get("level") in ("series", "volume")]
    rows = [r for r in rows if r.get("level") not in ("series", "volume")]
    bad = sum(1 for r in rows if r["error"])
    counts: dict[str, int] = {}
    for r in rows:
        if not r["error"]:
            counts[r["label"]] = counts.get(r["label"], 0) + 1
    summary = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
    click.echo(
        f"Predicted {len(rows) - bad} image(s) ({summary}); {_not_scored(rows)} → "
        f"{display_path(output)}"
    )
    rule, thr = _label_rule(model_path, threshold)
    click.echo(f"label: {rule}")
    if units:
        click.echo(f"{len(units)} series/volume(s), probabilities = {RULE}, labelled as above:")
        for r in units:
            shown = _unit_probability(r, thr)
            n = r["slices"]
            note = "".join(f"; {r[k]}" for k in ("warning", "dicom_note") if r.get(k))
            dcm = (
                f" → {r['dicom']} (Series Number {r['dicom_series_number']})"
                if r.get("dicom")
                else ""
            )
            slices = f"{n} slice{'s' if n != 1 else ''}"
            click.echo(f"  {r['path']}: {shown}{r['label']} ({slices}){dcm}{note}")
    for r in rows:
        if r["error"]:
            click.echo(f"  {r['path']}: {one_line(r['error'])}", err=True)
        elif r.get("warning"):
            click.echo(f"  {r['path']}: predicted, but {one_line(r['warning'])}", err=True)
    if not show_paths and any(r["error"] and r.get("level") == "file" for r in rows):
        click.echo(_PSEUDONYM_HINT, err=True)
    if dicom_out is not None:
        skipped = [r for r in units + rows if r.get("dicom_skipped")]
        made = sum(1 for r in units if r.get("dicom"))
        click.echo(f"{made} DICOM Structured Report(s) → {display_path(dicom_out)}", err=True)
        if skipped:
            click.echo(f"No DICOM Structured Report for {len(skipped)} input(s):", err=True)
            why: dict[str, list[str]] = {}
            for r in skipped:
                why.setdefault(r["dicom_skipped"], []).append(r["path"])
            for reason, paths in why.items():  # by reason: a folder of JPEGs is one line
                more = f" and {len(paths) - 10} more" if len(paths) > 10 else ""
                click.echo(f"  {one_line(reason)}: {', '.join(paths[:10])}{more}", err=True)
    if rows and bad == len(rows) and not units:
        raise click.ClickException(f"None of the {bad} input(s) could be read (listed above).")


@main.command("export-onnx")
@click.argument("model_path", type=_EXISTING)
def export_onnx(model_path: Path) -> None:
    """Export MODEL_PATH (X.keras) to X.onnx beside it, for `mriscan predict --engine onnx`
    (and --engine auto, which then uses it).

    ONNX Runtime runs the export without importing TensorFlow, so each `mriscan predict` starts
    seconds sooner; the probabilities equal Keras's up to float rounding. The export records
    the model file's SHA-256: after retraining, export again (predict refuses a stale one).
    """
    from mriscan.onnx_engine import export_onnx as run_export

    click.echo(f"Written {display_path(run_export(model_path))}")


def _slice_choice(slice_list: str | None, top_k: int) -> list[int] | None:
    """explain's --slices as a list (each slice once, in the order given), or None; bad values
    of --slices / --top-k, or both given, are usage errors naming the flags."""
    ctx = click.get_current_context()
    if top_k < 1:
        raise click.BadParameter(f"must be >= 1; got {top_k}.", param_hint="'--top-k'")
    if slice_list is None:
        return None
    if ctx.get_parameter_source("top_k") is not click.core.ParameterSource.DEFAULT:
        raise click.UsageError(
            "--slices and --top-k exclude each other: --slices picks the slices to explain, "
            "--top-k has the most likely ones picked; give one of them."
        )
    try:
        chosen = [int(k) for k in slice_list.split(",")]
    except ValueError:
        raise click.BadParameter(
            f"expected integers like 0,4,7; got {slice_list!r}.", param_hint="'--slices'"
        ) from None
    if any(k < 0 for k in chosen):
        raise click.BadParameter(
            f"slices are numbered from 0; got {slice_list!r}.", param_hint="'--slices'"
        )
    return list(dict.fromkeys(chosen))


@main.command()
@click.argument("model_path", type=_EXISTING)
@click.argument("images", type=_PATH, nargs=-1, required=True)
@click.option("--out", type=_FOLDER, default=DEFAULT_OUT / "explain", show_default=True)
@click.option(
    "--class",
    "explain_class",
    default=None,
    help="Class whose evidence is shown [default: the predicted class]. Not with --boxes.",
)
@click.option(
    "--slices",
    "slice_list",
    default=None,
    help="DICOM/NIfTI: comma-separated slices to explain: a NIfTI volume's own slice indices "
    "(as in its source name nifti/<id>#<index>), a DICOM series' places in slice order "
    "(0-based) [default: the --top-k most likely to show a tumor].",
)
@click.option("--top-k", type=int, default=3, show_default=True, help="DICOM/NIfTI slices.")
@click.option(
    "--boxes",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Pointing game instead of PNGs: a CSV file,class,x_center,y_center,width,height "
    "(fractions; files relative to the one folder given as IMAGES). Reports, per class, how "
    "often the map's peak on a correctly classified tumor slice lies inside its box and, "
    "beside it, within 15 source pixels of it (the tolerance of the game's authors, Zhang et "
    "al.; meant for slices of about 500 pixels a side) (the map of the box's class, a yes/no "
    "model's tumor class: the predicted class on every slice scored; so not with --class). "
    "A yes/no model scores every boxed tumor "
    "type as its tumor class; other models score only boxes of their own classes and count "
    "the rest as not scored.",
)
@click.option(
    "--method",
    type=click.Choice(CAM_METHODS),
    default=DEFAULT_CAM,
    show_default=True,
    help="layercam: LayerCAM (Jiang et al. 2021) fused over the two conv blocks before the "
    "last (finer; its peak hit figshare's tumor boxes 0.29 vs 0.13 of the time); gradcam: "
    "Grad-CAM (Selvaraju et al. 2017) of the last conv block.",
)
@_show_paths_option()
@click.option(
    "--dicom-out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Also write each explained DICOM slice's overlay as a DICOM Secondary Capture into "
    "this folder, in the source's study (same Study Instance UID, one new series per source "
    "series) so that a PACS files it there. These files carry the source's patient module "
    "(name, ID, birth date): keep them where the source images may be kept. JPEG/PNG and "
    "NIfTI inputs are listed as skipped.",
)
@_scan_options
def explain(
    model_path: Path,
    images: tuple[Path, ...],
    out: Path,
    explain_class: str | None,
    slice_list: str | None,
    top_k: int,
    boxes: Path | None,
    method: str,
    show_paths: bool,
    dicom_out: Path | None,
    **options: Any,
) -> None:
    """Class-activation heatmaps (--method) over each IMAGE (one PNG per image), and over
    chosen slices of DICOM series / NIfTI volumes (--slices, else the --top-k most likely).

    IMAGES are files or folders (searched recursively; hidden entries below them skipped). Each
    PNG is named after the image's path relative to the folder all images share, with / as __
    and _layercam.png added: a/slice_1.jpg and b/slice_1.jpg give a__slice_1_layercam.png and
    b__slice_1_layercam.png (a single image: slice_1_layercam.png). Should two names still clash
    (x.jpg beside x.png), the suffix is kept (x_jpg_layercam.png). Scanner slices are read as
    `predict` reads them (--dicom-*, --nifti-*, --modality) and named by pseudonym
    (series-<hash>_slice<k>_layercam.png, salted afresh each run), or with --show-paths by their
    series folder or volume file. A rerun into the same --out replaces the heat maps the earlier
    run of the same --method and --class wrote there (listed in OUT/explain_files.json; files
    explain did not write, or changed or made read-only since, are kept, never written over: a
    new map of that name is numbered -2; nothing is removed when the rerun fails or writes
    none). Maps an explain_files.json lists, found in an input folder, are skipped. Exits 1 if
    no image is found, or none could be read or has a slice --slices asks for. With --boxes, the
    pointing game over one data folder instead (no PNGs): the share of map peaks inside the
    tumor box and, beside it, within 15 source pixels of it (the tolerance of the game's
    authors, Zhang et al., for images of about 500 pixels a side); it maps each slice's box
    class (a yes/no model: its tumor class), the predicted class on every slice scored, so
    --class with --boxes is a usage error (exit 2), as are the options it would not use:
    --slices, --top-k, --dicom-out, --show-paths (it names files by their path in the boxes
    file), --modality and the --dicom-*/--nifti-* options.
    """
    _import_keras()
    from mriscan._heatmap_record import RECORD_NAME
    from mriscan.explain import explain as run_explain
    from mriscan.readers import collect_inputs
    from mriscan.scan import new_salt
    from mriscan.scan_predict import problem_rows

    if boxes is not None:
        _refuse_with_boxes(click.get_current_context())
        _pointing_game(model_path, images, boxes, out, method)
        return
    chosen = _slice_choice(slice_list, top_k)
    files, problems = collect_inputs(images)
    files, problems, maps = _without_heatmaps(images, files, problems)
    if maps:
        click.echo(
            f"Skipped {maps} heat map(s) and record(s) of earlier explain runs found in the "
            "input folders (listed in their explain_files.json; name a file to explain it).",
            err=True,
        )
    unused = problem_rows(problems, images, files, salt=new_salt(), show_paths=show_paths)
    for u in unused:
        click.echo(f"  {u['path']}: {one_line(u['error'])}", err=True)
    if not files:
        raise click.ClickException("No image to explain: no JPEG/PNG, DICOM or NIfTI input.")
    shown: list[dict] = []  # the rows printed as they come: a Ctrl-C can say what is written

    def on_row(row: dict, pressed: list[int]) -> None:
        shown.append(row)
        _echo_explained(row)
        if pressed:  # a Ctrl-C whose KeyboardInterrupt was lost: stop after this map
            raise KeyboardInterrupt

    try:
        with _noting_ctrl_c() as pressed:
            results = run_explain(
                model_path,
                [f.path for f in files],
                out=out,
                explain_class=explain_class,
                slices=chosen,
                top_k=None if chosen is not None else top_k,
                method=method,
                read_options=_read_options(options),
                show_paths=show_paths,
                dicom_out=dicom_out,
                on_row=lambda r: on_row(r, pressed),
            )
    except KeyboardInterrupt:
        maps = sum(not r["error"] for r in shown)
        click.echo(
            f"\nInterrupted: {maps} heat map(s) written to {display_path(out)} before the "
            f"Ctrl-C (listed in {display_path(out / RECORD_NAME)}; the next run replaces "
            "them); the inputs after them were not explained.",
            err=True,
        )
        click.get_current_context().exit(130)
    if not show_paths and any(r.get("level") == "file" for r in [*unused, *results]):
        click.echo(_PSEUDONYM_HINT, err=True)
    skipped = [r for r in results if r.get("dicom_skipped")]
    if skipped:
        click.echo(f"No DICOM Secondary Capture for {len(skipped)} explained image(s):", err=True)
        for r in skipped:
            click.echo(f"  {r['path']}: {one_line(r['dicom_skipped'])}", err=True)
    if not any(not r["error"] for r in results):
        raise click.ClickException(_nothing_explained(results))


def _without_heatmaps(
    given: Sequence[Path], files: list, problems: list[tuple[Path, str]]
) -> tuple[list, list[tuple[Path, str]], int]:
    """``collect_inputs``' files and problems less the heat maps (and records) an explain run
    wrote, found in a folder searched: those its ``explain_files.json`` lists (an --out inside
    an input folder; a rerun would explain its own maps). Files given by name are kept.
    Returns them and how many were dropped."""
    from mriscan._heatmap_record import recorded_maps

    named = {os.path.realpath(p) for p in given if Path(p).is_file()}
    listed: dict[Path, set[str]] = {}

    def is_map(p: Path) -> bool:
        if os.path.realpath(p) in named:
            return False
        if p.parent not in listed:
            listed[p.parent] = recorded_maps(p.parent)
        return p.name in listed[p.parent]

    kept = [f for f in files if not is_map(f.path)]
    left = [(p, why) for p, why in problems if not is_map(p)]
    return kept, left, len(files) - len(kept) + len(problems) - len(left)


def _echo_explained(r: dict) -> None:
    """One explain row on the console: the map written, or why there is none."""
    if r["error"]:
        click.echo(f"  {r['path']}: {one_line(r['error'])}", err=True)
        return
    dcm = f" and {r['dicom']}" if r.get("dicom") else ""
    note = f"; {r['dicom_note']}" if r.get("dicom_note") else ""
    warn = f"; warning: {r['warning']}" if r.get("warning") else ""
    click.echo(
        f"{r['path']}: P({r['explained_class']}) = {r['probability']:.3f}, predicted "
        f"{r['label']} ({r['decision']}) → {r['png']}{dcm}{note}{warn}"
    )


def _nothing_explained(results: list[dict]) -> str:
    """explain's last line when no row was explained: inputs that could not be read, and
    series / volumes read that have none of the ``--slices`` asked for, each counted."""
    lacking = {r["path"] for r in results if "missing_slice" in r}
    failed = sum("missing_slice" not in r for r in results)
    if not lacking:
        return f"None of the {failed} image(s) could be read; no heatmap was written."
    asked = sorted({r["missing_slice"] for r in results if "missing_slice" in r})
    said = ", ".join(map(str, asked))
    why = (
        f"no requested slice ({said}) exists in the {len(lacking)} series/volume(s) read "
        "(their slices are listed above)"
    )
    if failed:
        why += f", and {failed} input(s) could not be read"
    return f"Nothing to explain: {why}; no heatmap was written."


#: explain's parameters that the pointing game (--boxes) uses; every other one it would ignore
_BOXES_USES = {"model_path", "images", "out", "boxes", "method"}


def _refuse_with_boxes(ctx: click.Context) -> None:
    """``explain --boxes``: a usage error (exit 2, before the model loads) naming each option given
    that the pointing game would ignore, and why, instead of a run that silently drops it.
    --class picks the map of the heatmap PNGs (the game maps each slice's box class, the
    predicted class on every slice it scores); --slices, --top-k, --dicom-out and the
    DICOM/NIfTI reading options only act on the heatmap PNGs of scanner slices; --show-paths
    changes no name there, as the pointing game reads the JPEG/PNG files the boxes file lists
    and always names them by that path."""
    given = [
        p
        for p in ctx.command.params
        if p.name not in _BOXES_USES
        and ctx.get_parameter_source(p.name) is not click.core.ParameterSource.DEFAULT
    ]
    if not given:
        return
    why = {
        "explain_class": "--class and --boxes exclude each other: the pointing game scores the "
        "map of the predicted class of each correctly classified tumor slice (that is, its true "
        "class), not a chosen one; --class is for the heatmap PNGs",
        "slice_list": "it picks the DICOM/NIfTI slices to draw; the pointing game scores every "
        "boxed slice",
        "top_k": "it picks the DICOM/NIfTI slices to draw; the pointing game scores every "
        "boxed slice",
        "dicom_out": "the pointing game writes no heatmap to file as a Secondary Capture",
        "show_paths": "the pointing game names files by their path in the boxes file already "
        "(it reads JPEG/PNG files only, and hides no name)",
    }
    scan = "the pointing game reads the JPEG/PNG files of the boxes file, not DICOM/NIfTI"
    lines = [f"  {p.opts[0]}: {why.get(p.name, scan)}" for p in given]
    raise click.UsageError(
        "--boxes plays the pointing game, which does not use "
        + ", ".join(p.opts[0] for p in given)
        + ":\n"
        + "\n".join(lines)
        + "\nLeave them out, or leave out --boxes to draw heatmap PNGs."
    )


def _pointing_game(
    model_path: Path, images: tuple[Path, ...], boxes: Path, out: Path, method: str
) -> None:
    """``explain --boxes``: the pointing game over one data folder; JSON in OUT."""
    from mriscan.artifacts import write_json
    from mriscan.pointing import pointing_game

    # one folder typed twice (a repeated shell glob, a pasted path) is that one folder
    same = {os.path.realpath(p) for p in images}
    if len(same) != 1 or not images[0].is_dir():
        got = f"{len(same)} distinct paths" if len(same) != 1 else f"{images[0]}: not a folder"
        raise click.UsageError(
            f"--boxes needs exactly one data folder as IMAGES (got {got}); the boxes file's "
            "paths are relative to it."
        )
    with _progress("pointing game") as progress:
        result = pointing_game(model_path, images[0], boxes, progress=progress, method=method)
    path = write_json(out / "pointing_game.json", result)
    table = _write_pointing_slices(out / "pointing_game_slices.csv", result["slices"])
    from mriscan.plots import save_pointing_curve

    scored = {n: [r["distance_px"] for r in result["slices"] if r["class"] == n and r["correct"]]
              for n in result["per_class"]}  # fmt: skip
    curve = save_pointing_curve(scored, result["tolerance_px"], out / "pointing_game.png")
    tol = f"{result['tolerance_px']:g} source px"
    click.echo(
        f"Pointing game ({method} peak inside the tumor box, correctly classified slices; "
        f"beside it within {tol} of the box, the tolerance of the game's authors, Zhang et al.):"
    )
    click.echo(f"  rule: {result['rule']}")
    for name, s in {**result["per_class"], "all": result["overall"]}.items():
        click.echo(
            f"  {name:>12}: {_num(s['pointing'])}  ({s['hits']} hits of {s['correct']} "
            "correctly classified, "
            f"{s['n']} boxed slices); within {tol}: {_num(s['pointing_within_tolerance'])} "
            f"({s['hits_within_tolerance']})"
        )
    for name, s in result["not_scored"].items():
        click.echo(f"  {s['reason']}: {name}, {s['n']} boxed slices, not scored")
    for rel, why in result["unreadable"]:
        click.echo(f"  unreadable: {display_path(rel)}: {one_line(why)}", err=True)
    nb = result["without_box"]
    if nb["count"]:
        where = ", ".join(f"{k}: {v}" for k, v in nb["per_folder"].items())
        click.echo(
            f"  {nb['count']} tumor slice(s) have no box in {boxes.name} and were not scored "
            f"({where})"
        )
    click.echo(f"Written to {path} (per slice: {table}; by tolerance: {curve})")


def _write_pointing_slices(path: Path, slices: list[dict[str, Any]]) -> Path:
    """The pointing game's per-slice rows as CSV (``hit`` empty when undefined; ``distance_px``
    from the peak to the nearest box in source pixels, 0 inside; ``side_px`` the slice's longer
    side; ``blank`` one grey level; ``near_training`` a near-duplicate of a training slice,
    empty when not checkable), atomically."""
    import csv

    from mriscan.io import write_whole

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            cols = [
                "file", "class", "predicted", "correct", "peak_x", "peak_y", "distance_px", "hit",
                "side_px", "blank", "near_training",
            ]  # fmt: skip
            writer = csv.DictWriter(fh, fieldnames=cols, lineterminator="\n")
            writer.writeheader()
            for row in slices:  # undefined (None) as an empty cell
                writer.writerow({k: "" if row[k] is None else row[k] for k in cols})

    return write_whole(path, write)


# ---- audit (issue 17): one self-contained block ---------------------------------------------
class _AuditCommand(click.Command):
    """``audit`` reports bad usage (unknown option, missing or nonexistent DATA) as one line and
    exit status 1: click's usage status 2 must not be read as a finding by a CI job."""

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:
            raise click.ClickException(
                f"{exc.format_message()} (see `mriscan audit --help`)"
            ) from exc


@main.command(cls=_AuditCommand)
@click.argument("data", type=_EXISTING, nargs=-1, required=True)
@click.option("--test", "test", type=_EXISTING, default=None, help="Test set (train = DATA).")
@click.option(
    "--split",
    "split",
    type=_EXISTING,
    default=None,
    help="split.json from `mriscan train`: its train+val vs test items of the store DATA.",
)
@click.option(
    "--out", type=_PATH, default=DEFAULT_OUT / "audit", show_default=True, help="Report folder."
)
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report to stdout.")
@click.option(
    "--threshold",
    type=float,
    default=0.95,
    show_default=True,
    help="Signature correlation above which two slices are near-duplicates.",
)
@click.option(
    "--shortcut-auc",
    type=float,
    default=0.75,
    show_default=True,
    help="Metadata-only AUC at which a shortcut is flagged.",
)
@click.option("--workers", type=_POSITIVE, default=None, help="Decoding threads [default: cores].")
@_show_paths_option(slices=False)
def audit(
    data: tuple[Path, ...],
    test: Path | None,
    split: Path | None,
    out: Path,
    as_json: bool,
    threshold: float,
    shortcut_auc: float,
    workers: int | None,
    show_paths: bool,
) -> None:
    """Check DATA (class folders or stores) for duplicates, label conflicts, leakage between
    a train/test pair (--test or --split) and shortcuts (metadata that predicts the label).

    Writes audit.md, audit.json and figures to --out. DICOM/NIfTI files that cannot be
    audited are named by pseudonym there and on the console (by path on the console with
    --show-paths); with --show-paths the console also lists each label conflict's two files
    by path (the report names them by pseudonym).

    \b
    Exit status (codes click does not use for anything else):
      0  no leakage and no label conflicts (shortcuts are reported, not fatal)
      1  bad input or usage (one line: unknown option, missing data, unreadable
         data, --out is a file, split that does not fit the store)
      3  leakage: test slices with an exact or near duplicate in train, or of a
         patient (keyed Patient ID) with slices in train
      4  label conflicts: the same (or a near-same) slice under two labels
      7  both 3 and 4
    """
    from mriscan.audit import AuditConfig, prepare_out, to_json, write_report
    from mriscan.audit import audit as run_audit

    cfg = AuditConfig(threshold=threshold, shortcut_auc=shortcut_auc, workers=workers)
    prepare_out(out)  # an unusable --out fails now, not after the audit
    with _progress("auditing") as progress:
        report = run_audit(data, test=test, split=split, config=cfg, progress=progress)
    page = write_report(report, out)
    hidden = False
    for r in report["sets"]:
        local = r["_set"].local_names  # scanner files' paths: shown only with --show-paths
        for s in r["skipped"][:20]:
            where = s["source"]
            if where in local and show_paths:
                where = f"{where} ({display_path(local[where])})"
            hidden = hidden or (s["source"] in local and not show_paths)
            click.echo(f"not audited: {r['name']}/{where}: {one_line(s['reason'])}", err=True)
        if len(r["skipped"]) > 20:
            click.echo(f"not audited: {len(r['skipped']) - 20} more (see {page})", err=True)
        if show_paths:  # the report names a scanner file by pseudonym: say which file it is
            for c in r["label_conflicts"][:20]:
                a, b = (
                    display_path(local[f]) if f in local else f"{r['name']}/{display_path(f)}"
                    for f in (c["a_file"], c["b_file"])
                )
                click.echo(
                    f"label conflict: {a} ({c['a_class']}) and {b} ({c['b_class']}): "
                    f"{c['kind']}, r = {c['correlation']}",
                    err=True,
                )
            if len(r["label_conflicts"]) > 20:
                more = len(r["label_conflicts"]) - 20
                click.echo(f"label conflict: {more} more (see {page})", err=True)
    if hidden:
        click.echo(_PSEUDONYM_HINT, err=True)
    if as_json:
        click.echo(to_json(report))
    else:
        for r in report["sets"]:
            sc, sp = r["shortcut"], r["shortcut_preprocessed"]
            click.echo(
                f"{r['name']}: {r['decoded']} slices; exact-duplicate groups "
                f"{r['exact']['groups']}; near-duplicate pairs (r > {threshold}) "
                f"{r['near']['pairs']}; groups {r['groups']['count']}; label conflicts "
                f"{len(r['label_conflicts'])}; metadata AUC {_auc_text(sc)}; "
                f"after preprocessing {_auc_text(sp)}"
            )
            for note in r["notes"]:
                click.echo(f"  note: {note}")
        for x in report["cross"]:
            click.echo(
                f"{x['a']} vs {x['b']}: {x['pairs']} pairs above r = {threshold}, "
                f"{x['b_items_matched']} {x['b']} slices matched"
            )
        leak = report["leakage"]
        if leak is not None:
            by = ", ".join(f"{c} {v['leaked']}/{v['items']}" for c, v in leak["by_class"].items())
            head = "LEAKAGE" if leak["leaked"] else "no leakage"
            click.echo(
                f"{head} {leak['train']} -> {leak['test']}: {leak['leaked']} of "
                f"{leak['test_items']} test slices have a duplicate in train ({by})"
            )
            _echo_same_patient(leak["same_patient"])
            changed = leak.get("changed_since_split")
            if changed and (changed["train"] or changed["test"]):
                click.echo(
                    f"  changed since the split was made: {len(changed['train'])} train+val, "
                    f"{len(changed['test'])} test items (audited on their current content; "
                    "see the report)"
                )
        click.echo(f"Report: {page} ({report['seconds']:.0f}s)")
    if report["exit_status"]:
        sys.exit(report["exit_status"])


def _echo_same_patient(same: dict) -> None:
    """The audit's patients on both sides of a train/test pair (``check_patients``), by
    pseudonym: at most 10 listed, the rest in the report."""
    if not same["checked"]:
        click.echo(f"  cannot check for patients on both sides: {same['why_not']}")
        return
    if not same["patients"]:
        click.echo(
            f"  no patient on both sides ({same['test_patients']} patient(s) in test, "
            f"{same['train_patients']} in train, by keyed Patient ID)"
        )
        return
    by = ", ".join(f"{c} {n}" for c, n in same["by_class"].items())
    click.echo(
        f"LEAKAGE: {same['patients']} patient(s) on both sides (same keyed Patient ID): "
        f"{same['test_slices']} test slices ({by}), {same['train_slices']} train slices"
    )
    for p in same["shared"][:10]:
        click.echo(f"  {p['patient']}: {p['test_slices']} test, {p['train_slices']} train")
    if len(same["shared"]) > 10:
        click.echo(f"  ... and {len(same['shared']) - 10} more (see the report)")


def _auc_text(s: dict) -> str:
    """'0.981 (SHORTCUT: width, height)', '0.512 (ok)' or 'undefined (reason)'."""
    if s.get("auc") is None:
        return f"undefined ({s.get('reason', 'not scored')})"
    verdict = "SHORTCUT: " + ", ".join(s["carriers"][:3]) if s["flagged"] else "ok"
    return f"{s['auc']:.3f} ({verdict})"
