"""Developer sessions: tests (TensorFlow), tests-jax, tests-torch, lint, bench."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint"]
nox.options.default_venv_backend = "venv"


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite on the default (TensorFlow) backend."""
    session.install("-e", ".[dev]")
    session.run("pytest", *session.posargs)


@nox.session(name="tests-jax")
def tests_jax(session: nox.Session) -> None:
    """Run the backend-agnostic tests (model, pipeline, short training) on JAX."""
    session.install("-e", ".[dev,jax]")
    session.run("pytest", "-m", "backend", *session.posargs, env={"KERAS_BACKEND": "jax"})


@nox.session(name="tests-torch")
def tests_torch(session: nox.Session) -> None:
    """Run the backend-agnostic tests on PyTorch (CPU build; not part of CI)."""
    session.install("-e", ".[dev]")
    session.install("torch==2.13.0")
    session.run("pytest", "-m", "backend", *session.posargs, env={"KERAS_BACKEND": "torch"})


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def bench(session: nox.Session) -> None:
    """Run the pytest-benchmark suite, save JSON under bench/.results/ and write the summary."""
    session.install("-e", ".[dev]")
    session.run(
        "pytest",
        "bench",
        "-p",
        "no:cacheprovider",
        "--benchmark-only",
        "--benchmark-storage=file://bench/.results",
        "--benchmark-autosave",
        "--benchmark-columns=min,median,mean,rounds",
        "--benchmark-sort=name",
        *session.posargs,
    )
    session.run("python", "bench/summary.py")
