"""The ``mriscan`` command line: a thin click shell over the public API.

Heavy imports (Keras, TensorFlow) happen inside the commands that need them, so ``mriscan --help``
answers at once.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from mriscan.errors import MriscanError

DEFAULT_STORE = Path("data/processed/images.zarr")
DEFAULT_OUT = Path("artifacts")
DEFAULT_MODEL = DEFAULT_OUT / "models" / "best_model.keras"
_PATH = click.Path(path_type=Path)
_EXISTING = click.Path(exists=True, path_type=Path)


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
@click.option(
    "--image-size",
    type=int,
    default=128,
    show_default=True,
    help="Side S of the stored S×S slices.",
)
@click.option("--aspect", type=click.Choice(["pad", "stretch"]), default="pad", show_default=True)
@click.option("--no-crop", is_flag=True, help="Do not crop to the head's bounding box.")
@click.option("--workers", type=int, default=None, help="Decoding threads [default: CPU cores].")
@click.option("--strict", is_flag=True, help="Fail, committing nothing, on any bad file.")
def ingest(
    raw_dir: Path,
    store_path: Path,
    image_size: int,
    aspect: str,
    no_crop: bool,
    workers: int | None,
    strict: bool,
) -> None:
    """Decode, preprocess and store every image under RAW_DIR/<class>/.

    Re-running adds only new files; bad files are skipped and listed.
    """
    from mriscan.ingest import IngestConfig
    from mriscan.ingest import ingest as run_ingest
    from mriscan.preprocess import PreprocessConfig

    cfg = IngestConfig(
        preprocess=PreprocessConfig(size=image_size, aspect=aspect, crop=not no_crop),
        workers=workers,
        strict=strict,
    )
    report = _ingest_with_progress(raw_dir, store_path, cfg, run_ingest)
    _print_ingest(report)


def _ingest_with_progress(raw_dir, store_path, cfg, run_ingest):
    """Run an ingest under a click progress bar."""
    state = {"bar": None, "done": 0}

    def progress(done: int, total: int) -> None:
        if state["bar"] is None:
            state["bar"] = click.progressbar(length=total, label="ingesting", file=sys.stderr)
            state["bar"].__enter__()
        state["bar"].update(done - state["done"])
        state["done"] = done

    try:
        return run_ingest(raw_dir, store_path, cfg, progress=progress)
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
    click.echo(f"  size on disk {_human_bytes(report.bytes_on_disk)}; {report.seconds:.1f}s")
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
