"""The ``mriscan`` command line: a thin click shell over the public API.

Heavy imports (Keras, TensorFlow) happen inside the commands that need them, so ``mriscan --help``
answers at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import sys
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from mriscan.config import CVConfig, TrainConfig, override
from mriscan.errors import MriscanError
from mriscan.preprocess import PreprocessConfig
from mriscan.sources import DEFAULT_RAW, DEFAULT_STORE, PHANTOM_STORE

DEFAULT_OUT = Path("artifacts")
DEFAULT_MODEL = DEFAULT_OUT / "models" / "best_model.keras"
_PATH = click.Path(path_type=Path)
_EXISTING = click.Path(exists=True, path_type=Path)
_TYPED = (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT)


def _field(cls: type, path: str) -> tuple[dataclasses.Field, Any, type]:
    """The dataclass field at dotted ``path`` of ``cls``, its default and its owner class."""
    owner: Any = cls
    *heads, last = path.split(".")
    for head in heads:
        owner = type(getattr(owner(), head))
    f = {x.name: x for x in dataclasses.fields(owner)}[last]
    return f, getattr(owner(), last), owner


def config_option(cls: type, path: str, flag: str, help: str = "") -> Callable:
    """A click option for setting ``path`` of config class ``cls``: default, choices, type and
    help come from the dataclass (``mriscan.config``), so nothing is restated here.

    The parameter is named ``cfg__<path with __>``; ``_typed_overrides`` keeps only the ones
    the user typed, so a config's own defaults always win otherwise.
    """
    f, default, owner = _field(cls, path)
    name = "cfg__" + path.replace(".", "__")
    text = help or f.metadata.get("help", "")
    choices = f.metadata.get("choices")
    if choices is None:
        hint = typing.get_type_hints(owner).get(f.name)
        if typing.get_origin(hint) is typing.Literal:
            choices = typing.get_args(hint)
    if isinstance(default, bool):
        return click.option(
            f"{flag}/--no-{flag[2:]}", name, default=default, show_default=True, help=text
        )
    kw: dict[str, Any] = {"default": default, "show_default": default is not None, "help": text}
    if choices:
        kw["type"] = click.Choice(list(choices))
    elif isinstance(default, tuple):
        kw.update(type=int, nargs=len(default))
    elif default is not None:
        kw["type"] = type(default)
    else:
        kw["type"] = int
    return click.option(flag, name, **kw)


def _typed_overrides(ctx: click.Context, params: dict[str, Any]) -> dict[str, Any]:
    """``{dotted path: value}`` of the config options the user typed (not their defaults)."""
    out = {}
    for name, value in params.items():
        if name.startswith("cfg__") and ctx.get_parameter_source(name) in _TYPED:
            out[name[5:].replace("__", ".")] = value
    return out


def _human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"


class _Group(click.Group):
    """Turns mriscan errors into one clear line and exit status 1 (no traceback)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MriscanError as exc:
            raise click.ClickException(str(exc)) from exc


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mriscan")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(verbose: int) -> None:
    """mriscan: train and serve brain-MRI tumor classifiers (tumor / no tumor).

    Typical flow: ingest class folders into a store, train, evaluate or cross-validate,
    predict and explain. `mriscan train` with no arguments runs the whole job on data/raw
    (or on generated phantom slices when data/raw is empty).
    """
    level = logging.WARNING - 10 * min(verbose + 1, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("numba").setLevel(logging.WARNING)


@main.command()
@click.argument("raw_dir", type=_EXISTING)
@click.option(
    "--store",
    "store_path",
    type=_PATH,
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
@click.option("--workers", type=int, default=None, help="Decoding threads [default: CPU cores].")
@click.option("--strict", is_flag=True, help="Fail, committing nothing, on any bad file.")
@click.option(
    "--merge", is_flag=True, help="Allow adding a folder other than the one the store holds."
)
@click.pass_context
def ingest(
    ctx: click.Context,
    raw_dir: Path,
    store_path: Path,
    workers: int | None,
    strict: bool,
    merge: bool,
    **options: Any,
) -> None:
    """Decode, preprocess and store every image under RAW_DIR/<class>/.

    Re-running adds only new files; bad files are skipped and listed.
    """
    from mriscan.ingest import IngestConfig
    from mriscan.ingest import ingest as run_ingest

    preprocess = override(PreprocessConfig(), _typed_overrides(ctx, options))
    cfg = IngestConfig(preprocess=preprocess, workers=workers, strict=strict, merge=merge)
    with _progress("ingesting") as progress:
        report = run_ingest(raw_dir, store_path, cfg, progress=progress)
    _print_ingest(report)


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


def _print_ingest(report) -> None:
    """Print an ingest summary."""
    added = ", ".join(f"{k}: {v}" for k, v in report.added.items())
    click.echo(f"Store {report.store}: added {report.n_added} ({added}); {report.total} in total.")
    click.echo(
        f"  exact duplicates recorded: {report.exact_duplicates}; already stored: "
        f"{report.already_stored}; near-duplicate groups: {report.duplicate_groups}"
    )
    from mriscan.store import ImageStore

    with ImageStore.open(report.store) as store:
        size = store.nbytes_stored()
    click.echo(f"  size on disk {_human_bytes(size)}; {report.seconds:.1f}s")
    if report.skipped:
        click.echo(f"  skipped {len(report.skipped)} bad file(s):")
        for path, reason in report.skipped:
            click.echo(f"    {path}: {reason}")


@main.command()
@click.option("--store", "store_path", type=_PATH, default=DEFAULT_STORE, show_default=True)
def verify(store_path: Path) -> None:
    """Check every chunk, shape, label and pixel checksum of a store (exit 1 if any is bad)."""
    from mriscan.store import verify_store

    problems = verify_store(store_path)
    if problems:
        for p in problems:
            click.echo(f"BAD {p}", err=True)
        raise click.ClickException(
            f"{len(problems)} problem(s) in {store_path}; re-ingest "
            "the named samples (or the whole folder into a new store)."
        )
    click.echo(f"OK {store_path}: every sample readable and matching its checksum.")


@main.command()
@click.option("--store", "store_path", type=_PATH, default=DEFAULT_STORE, show_default=True)
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
        f"Groups:     {data['duplicate_groups']} near-duplicate groups; "
        f"{data['exact_duplicates_skipped']} exact duplicate files not stored twice"
    )
    click.echo(f"Preprocess: {data['preprocess']}")
    click.echo(
        f"Codec:      {' → '.join(c['name'] for c in data['codec'])} "
        f"{data['codec'][-1].get('configuration', '')}; chunks {data['chunks']}"
    )
    ratio = data["bytes_on_disk"] / data["bytes_raw"] if data["bytes_raw"] else 0
    click.echo(
        f"On disk:    {_human_bytes(data['bytes_on_disk'])} "
        f"({ratio:.0%} of {_human_bytes(data['bytes_raw'])} raw)"
    )


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
    ("pretrain.phantoms", "--pretrain"),
    ("pretrain.epochs", "--pretrain-epochs"),
    ("fit.implant", "--implant"),
    ("optimizer.learning_rate", "--learning-rate"),
    ("split.val_fraction", "--val-fraction"),
)


def _train_options(f: Callable) -> Callable:
    """Options shared by train and cv: --store, --out and the ``_TRAIN_OPTIONS`` settings."""
    opts = [
        click.option(
            "--store",
            "store_path",
            type=_PATH,
            default=None,
            help=f"Store to ingest DATA into [default: {DEFAULT_STORE}, or {PHANTOM_STORE} "
            "for phantoms].",
        ),
        click.option(
            "--out", type=_PATH, default=DEFAULT_OUT, show_default=True, help="Artifacts folder."
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

    On phantom data the phantom pre-training is switched off in ``overrides``: more
    phantoms add nothing there.
    """
    if data is None:
        from mriscan.synth import default_raw_data

        data = default_raw_data(DEFAULT_RAW, log=lambda m: click.secho(m, fg="yellow", err=True))
        if data.name == "synthetic" and store_path is None:
            store_path = PHANTOM_STORE
    if data.name == "synthetic" and overrides.get("pretrain.phantoms", 1):
        click.secho("Phantom data: phantom pre-training skipped.", fg="yellow", err=True)
        overrides["pretrain.phantoms"] = 0
    return data, store_path


@main.command()
@click.argument("data", type=_EXISTING, required=False)
@_train_options
@config_option(TrainConfig, "split.test_fraction", "--test-fraction")
@config_option(TrainConfig, "runtime.verbose", "--verbose-fit")
@click.pass_context
def train(
    ctx: click.Context,
    data: Path | None,
    store_path: Path | None,
    out: Path,
    **options: Any,
) -> None:
    """Train the classifier on DATA (class folders or a store) and write artifacts.

    With no DATA: uses data/raw/<class>/ if present, else generates synthetic phantoms
    into data/raw/synthetic/ once. Split: stratified, duplicate-group aware; the kept
    model (--select) is evaluated once on the held-out test split, with the decision
    threshold chosen on the validation split.
    """
    overrides = _typed_overrides(ctx, options)
    data, store_path = _resolve_data(data, store_path, overrides)
    cfg = override(TrainConfig(), overrides)
    click.echo("Loading TensorFlow/Keras...", err=True)
    from mriscan.training.workflow import train as run_train

    click.echo(f"Training on {data} → {out}/", err=True)
    result = run_train(data, cfg, out=out, store_path=store_path)
    click.echo(f"\n{result.hardware.describe()}")
    _print_metrics("Test split", result.metrics.get("test") or result.metrics["validation"])
    click.echo(
        f"Artifacts in {out}/: models/best_model.keras, history.json, metrics.json, "
        f"split.json, plots/ ({result.seconds:.0f}s)"
    )


def _print_metrics(title: str, m: dict) -> None:
    """Print accuracy, AUC, per-class precision/recall and the confusion matrix."""
    click.echo(f"{title} (n={m['n']}, threshold {m['threshold']:.3f} chosen on validation):")
    click.echo(
        f"  accuracy {m['accuracy']:.3f}   ROC AUC {m['roc_auc']:.3f}   "
        f"sensitivity {m['sensitivity']:.3f}   specificity {m['specificity']:.3f}"
    )
    for name, pc in m["per_class"].items():
        click.echo(
            f"  {name:>8}: precision {pc['precision']:.3f}  recall {pc['recall']:.3f}  "
            f"F1 {pc['f1']:.3f}  (n={pc['support']})"
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
def synth(
    out_dir: Path,
    count: int,
    tumor_fraction: float,
    size_range: tuple[int, int],
    seed: int,
    workers: int | None,
) -> None:
    """Generate synthetic phantom slices into OUT_DIR/yes and OUT_DIR/no."""
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
    type=_PATH,
    default=None,
    help="Evaluate on this store instead of DATA.",
)
@click.option(
    "--split",
    type=click.Choice(["test", "val", "train", "all"]),  # = mriscan.evaluate.SPLITS (tested)
    default="test",
    show_default=True,
    help="Split of a store (recorded in split.json at training).",
)
@click.option(
    "--out",
    type=_PATH,
    default=None,
    help="Where evaluation/ is written [default: the model's artifacts folder].",
)
def evaluate(
    data: Path | None, model_path: Path, store_path: Path | None, split: str, out: Path | None
) -> None:
    """Metrics and plots of a trained model on a split of its store or a labelled folder.

    Writes evaluation/metrics.json, confusion_matrix.png, roc.png and predictions.csv.
    """
    from mriscan.evaluate import evaluate as run_evaluate

    result = run_evaluate(model_path, store_path or data, split=split, out=out)
    _print_metrics(f"{result['data']} [{result['split']}]", result)


@main.command()
@click.argument("data", type=_EXISTING, required=False)
@_train_options
@config_option(CVConfig, "folds", "--folds")
@config_option(CVConfig, "repeats", "--repeats")
@click.pass_context
def cv(
    ctx: click.Context,
    data: Path | None,
    store_path: Path | None,
    out: Path,
    **options: Any,
) -> None:
    """Cross-validate: stratified k-fold with every duplicate group inside one fold.

    Trains one model per fold (same defaults as train) and writes <out>/cv/: metrics.json
    (mean ± std, bootstrap 95% CI, per fold), oof_predictions.csv, roc.png,
    confusion_matrix.png.
    """
    overrides = _typed_overrides(ctx, options)
    folds = {k: overrides.pop(k) for k in ("folds", "repeats") if k in overrides}
    data, store_path = _resolve_data(data, store_path, overrides)
    tcfg = override(TrainConfig(), {"runtime.verbose": "line", **overrides})
    cfg = override(CVConfig(train=tcfg), folds)
    from mriscan.training.crossval import HEADLINE, cross_validate

    click.echo(f"{cfg.folds}-fold CV × {cfg.repeats} on {data} → {out}/cv/", err=True)
    s = cross_validate(data, cfg, out=out, store_path=store_path)
    p = s["protocol"]
    click.echo(
        f"\n{p['folds']}-fold CV × {p['repeats']}, {p['samples']} slices in "
        f"{p['duplicate_groups']} duplicate groups ({s['seconds'] / 60:.1f} min):"
    )
    for key in HEADLINE:
        m = s[key]
        folds_txt = " ".join(f"{v:.3f}" for v in m["per_fold"])
        click.echo(
            f"  {key:<12} {m['mean']:.3f} ± {m['std']:.3f}  95% CI [{m['ci95'][0]:.3f}, "
            f"{m['ci95'][1]:.3f}]  folds: {folds_txt}"
        )
    click.echo(f"Written to {out}/cv/")


@main.command()
@click.argument("model_path", type=_EXISTING)
@click.argument("inputs", type=_PATH, nargs=-1, required=True)
@click.option(
    "--output",
    type=_PATH,
    default=Path("predictions.csv"),
    show_default=True,
    help="CSV or JSON file (by suffix).",
)
@click.option(
    "--threshold",
    type=float,
    default=None,
    help="Decision threshold [default: the one stored with the model].",
)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--workers", type=int, default=None, help="Decoding threads [default: cores].")
def predict(
    model_path: Path,
    inputs: tuple[Path, ...],
    output: Path,
    threshold: float | None,
    batch_size: int,
    workers: int | None,
) -> None:
    """Predict image files and folders with a trained model (columns: path, probability,
    label, error). Bad files get their reason in `error` and do not stop the rest."""
    from mriscan.predict import predict as run_predict

    rows = run_predict(
        model_path,
        inputs,
        output=output,
        threshold=threshold,
        batch_size=batch_size,
        workers=workers,
    )
    bad = sum(1 for r in rows if r["error"])
    counts: dict[str, int] = {}
    for r in rows:
        if not r["error"]:
            counts[r["label"]] = counts.get(r["label"], 0) + 1
    summary = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
    click.echo(f"Predicted {len(rows) - bad} image(s) ({summary}); {bad} unreadable → {output}")
    for r in rows:
        if r["error"]:
            click.echo(f"  {r['path']}: {r['error']}", err=True)


@main.command()
@click.argument("model_path", type=_EXISTING)
@click.argument("images", type=_PATH, nargs=-1, required=True)
@click.option("--out", type=_PATH, default=DEFAULT_OUT / "explain", show_default=True)
def explain(model_path: Path, images: tuple[Path, ...], out: Path) -> None:
    """Grad-CAM heatmaps of the last conv block over each IMAGE (one PNG per image)."""
    from mriscan.explain import explain as run_explain
    from mriscan.predict import collect_images

    for r in run_explain(model_path, collect_images(images), out=out):
        if r["error"]:
            click.echo(f"  {r['path']}: {r['error']}", err=True)
        else:
            click.echo(f"{r['path']}: P = {r['probability']:.3f} ({r['label']}) → {r['png']}")
