"""The console scripts of `[project.scripts]` (pyproject.toml): `pointsup-train ...` runs
exactly what `python -m pointsup.train ...` runs.

Some CLIs return their result (metrics, paths) for callers in Python. A console script
hands its function's return value to `sys.exit`, which would print a dict and exit with
status 1; these wrappers call the CLI and return None (a CLI that fails exits through
SystemExit with its own status, as under `python -m`). The commands that already return
None are listed in pyproject.toml directly.
"""

from __future__ import annotations


def train() -> None:
    from pointsup.train import cli

    cli()


def predict() -> None:
    from pointsup.predict import cli

    cli()


def evaluate() -> None:
    from pointsup.evaluate import cli

    cli()


def export() -> None:
    from pointsup.export import cli

    cli()


def self_training() -> None:
    from pointsup.self_training import cli

    cli()


def experiments() -> None:
    from pointsup.experiments import main

    main()
