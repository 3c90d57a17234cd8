"""One measurement per child process, so that a peak RSS is that measurement's alone.

A target's parent calls :func:`measure_in_child`, which starts ``python -m emo.cli bench TARGET --child ...``
(the target's own parser; ``emo`` builds no other command's parser, see :func:`emo.cli.main`). The child
prints one JSON line; a user error in it (EmoError) comes back to the parent as a one-line EmoError.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from emo.errors import EmoError


def add_child_option(parser: argparse.ArgumentParser, **kwargs) -> None:
    """``--child ...``: run one measurement and print it as a JSON line. Internal, so not in ``--help``."""
    parser.add_argument("--child", help=argparse.SUPPRESS, **kwargs)


def measure_in_child(target: str, argv: list[str]) -> dict:
    """Run ``emo bench TARGET argv...`` (argv holds ``--child ...``) and return its last stdout line's JSON."""
    command = [sys.executable, "-m", "emo.cli", "bench", target, *argv]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        last = lines[-1] if lines else f"exit code {done.returncode}"
        raise EmoError(f"measurement failed (emo bench {target}): {last.removeprefix('emo: error: ')}")
    return json.loads(done.stdout.strip().splitlines()[-1])
