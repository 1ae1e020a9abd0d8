"""Test helper: import a script of ``experiments/`` by path (the folder is not a package)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

EXPERIMENTS_DIR = Path(__file__).resolve().parents[1] / "experiments"


def load_experiment(name: str) -> ModuleType:
    """``experiments/<name>.py`` as a module; the folder goes on ``sys.path`` so that a script
    importing a sibling script (``threshold_carry`` imports ``threshold_rules``) works."""
    if str(EXPERIMENTS_DIR) not in sys.path:
        sys.path.insert(0, str(EXPERIMENTS_DIR))
    spec = importlib.util.spec_from_file_location(f"_exp_{name}", EXPERIMENTS_DIR / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
