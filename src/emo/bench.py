"""Benchmarks: speed and memory of each part, measured, never asserted.

Each target module exposes ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int`` like a command.
"""

from __future__ import annotations

HELP = "measure speed and memory (model, face, audio, generate, preprocess, train, evaluate)"

# target -> module; add a line when a benchmark exists.
TARGETS: dict[str, str] = {
    "model": "emo.models.bench",
    "generate": "emo.generate_bench",
    "audio": "emo.conditioning.bench_audio",
    "face": "emo.conditioning.bench_face",
    "preprocess": "emo.data.bench",
    "train": "emo.training.bench",
    "evaluate": "emo.eval.bench",
}


def add_arguments(parser) -> None:
    from emo.cli import add_subcommands

    subparsers = parser.add_subparsers(title="targets", metavar="TARGET", required=True)
    add_subcommands(subparsers, TARGETS)


def run(args) -> int:  # never reached: each target sets its own _run
    raise AssertionError("bench needs a target")
