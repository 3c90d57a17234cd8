"""Benchmarks: speed and memory of each part, measured, never asserted.

``emo bench TARGET``: one module here per target (``model.py``, ``generate.py``, ...), each exposing
``HELP``, ``add_arguments(parser)`` and ``run(args) -> int`` like a command, heavy imports inside ``run``.
Targets that need a fresh process per measurement start ``emo bench TARGET --child ...`` through
:func:`emo.bench.child.measure_in_child`. Default inputs are small media shipped in ``emo/assets``
(attribution in ``emo/assets/SOURCES.md``), so the benchmarks run from an installed package.
"""

from __future__ import annotations

from pathlib import Path

HELP = "measure speed and memory (model, face, audio, generate, preprocess, train, evaluate)"

ASSETS = Path(__file__).resolve().parents[1] / "assets"  # default benchmark inputs, inside the package

# target -> module; add a line when a benchmark exists.
TARGETS: dict[str, str] = {
    "model": "emo.bench.model",
    "generate": "emo.bench.generate",
    "audio": "emo.bench.audio",
    "face": "emo.bench.face",
    "preprocess": "emo.bench.preprocess",
    "train": "emo.bench.train",
    "evaluate": "emo.bench.evaluate",
}


def add_arguments(parser) -> None:
    from emo.cli import add_subcommands

    subparsers = parser.add_subparsers(title="targets", metavar="TARGET", required=True)
    add_subcommands(subparsers, TARGETS)


def run(args) -> int:  # never reached: each target sets its own _run
    raise AssertionError("bench needs a target")
