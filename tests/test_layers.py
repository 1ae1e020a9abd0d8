"""The import direction: modules below the model/pipeline layer never import Keras or TensorFlow.

Checked twice: statically (module-level imports, followed through mriscan's own modules, so the
failing chain is named) and at run time in a fresh interpreter.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "mriscan"
HEAVY = ("keras", "tensorflow", "jax", "torch")
# the data half of the house: decoding, kernels, store, ingest, splits, metrics, records
KERAS_FREE = (
    "mriscan.config",
    "mriscan.errors",
    "mriscan.io",
    "mriscan.preprocess",
    "mriscan.duplicates",
    "mriscan.store",
    "mriscan.ingest",
    "mriscan.sources",
    "mriscan.splits",
    "mriscan.metrics",
    "mriscan.artifacts",
    "mriscan.synth",
    "mriscan.inference",
    "mriscan.predict",
    "mriscan.scan_predict",
    "mriscan.tasks",
    "mriscan.audit",
    "mriscan.readers",
    "mriscan.dicom",
    "mriscan.nifti",
    "mriscan.dicom_headers",
    "mriscan.dicom_sc",
    "mriscan.dicom_sr",
    "mriscan.scan_config",
    "mriscan.ingest_config",
    "mriscan.paths",
    "mriscan.scratch",
    "mriscan.evaluate",
    "mriscan.cli",
)


def _module_file(name: str) -> Path | None:
    rel = Path(*name.split("."))
    for cand in (PKG.parent / rel.with_suffix(".py"), PKG.parent / rel / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def _top_level_imports(path: Path) -> list[str]:
    """Modules imported at module level (not inside functions: those load on use)."""
    tree = ast.parse(path.read_text())
    names: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names += [f"{node.module}.{a.name}" for a in node.names]
    return names


def _heavy_chain(name: str, seen: set[str]) -> list[str] | None:
    """The chain of imports from ``name`` to a heavy framework, or None."""
    if name in seen:
        return None
    seen.add(name)
    path = _module_file(name)
    if path is None:
        return None
    for dep in _top_level_imports(path):
        if dep.split(".")[0] in HEAVY:
            return [name, dep]
        if dep.startswith("mriscan"):
            # importing a submodule runs its package's __init__ first
            parts = dep.split(".")
            for k in range(2, len(parts) + 1):
                chain = _heavy_chain(".".join(parts[:k]), seen)
                if chain:
                    return [name, *chain]
    return None


@pytest.mark.parametrize("module", KERAS_FREE)
def test_module_imports_no_framework_statically(module):
    assert _module_file(module) is not None, f"{module} does not exist"
    chain = _heavy_chain(module, set())
    assert chain is None, " -> ".join(chain or [])


def test_data_layer_leaves_frameworks_unimported_at_run_time():
    code = (
        "import importlib, sys\n"
        f"for m in {KERAS_FREE!r}: importlib.import_module(m)\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_the_checker_sees_a_heavy_import():
    # the static check must be able to fail: a module that imports keras is caught
    assert _heavy_chain("mriscan.model", set()) == ["mriscan.model", "keras"]
    chain = _heavy_chain("mriscan.training.fit", set())
    assert chain is not None and chain[-1].split(".")[0] in HEAVY
