"""Peak memory and child-process helpers shared by the benchmarks.

A benchmark runs each measurement in a child process of its own module, so that a peak RSS is that
measurement's alone. The child prints one JSON line; a user error in it (EmoError) comes back to the
parent as a one-line EmoError, not as the child's traceback.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys

from emo.errors import EmoError


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / 1024 if sys.platform == "darwin" else peak / 1024


def measure_in_child(module: str, argv: list[str]) -> dict:
    """Run `python -m module argv...` and return the JSON object on its last stdout line."""
    done = subprocess.run([sys.executable, "-m", module, *argv], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        last = lines[-1] if lines else f"exit code {done.returncode}"
        raise EmoError(f"measurement failed ({module}): {last.removeprefix('emo: error: ')}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def child_main(add_arguments, run, prog: str) -> int:
    """The `__main__` of a benchmark module: parse, run, and turn an EmoError into one stderr line."""
    import argparse

    parser = argparse.ArgumentParser(prog=prog)
    add_arguments(parser)
    try:
        return int(run(parser.parse_args()) or 0)
    except EmoError as exc:
        print(f"emo: error: {exc}", file=sys.stderr)
        return 2
