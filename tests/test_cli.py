"""The `emo` command itself: subcommands, fast --help, benchmark input errors as one line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from emo.bench.child import measure_in_child
from emo.cli import COMMANDS, main
from emo.errors import EmoError


def test_help_lists_every_command_without_importing_torch():
    code = (
        "import sys; from emo.cli import build_parser; build_parser().format_help(); "
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
    listed = subprocess.run(
        [sys.executable, "-m", "emo.cli", "--help"], capture_output=True, text=True
    ).stdout
    assert all(name in listed for name in COMMANDS)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["bench", "model", "--frames", "0"], "--frames must be >= 1"),
        (["bench", "model", "--device", "nonsense"], "is not a device"),
    ],
)
def test_bench_bad_options_are_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("emo: error:") and message in err and "\n" not in err


def test_child_measurement_errors_come_back_as_one_line():
    # A user error inside the measuring child process (here: a bad device) surfaces as an EmoError, no traceback.
    with pytest.raises(EmoError) as info:
        measure_in_child("model", ["--child", "emo", "--device", "nonsense", "--repeats", "1"])
    message = str(info.value)
    assert "is not a device" in message and "\n" not in message and "Traceback" not in message


def test_maintainer_tools_run_but_are_not_listed(capsys):
    with pytest.raises(SystemExit) as done:
        main(["dev", "canonical-face", "--help"])
    assert done.value.code == 0 and "OUT.npz" in capsys.readouterr().out
    listed = subprocess.run(
        [sys.executable, "-m", "emo.cli", "--help"], capture_output=True, text=True
    ).stdout
    assert "dev" not in listed.split("commands:")[1]


def test_running_a_command_builds_only_its_parser():
    # A benchmark child (`emo bench TARGET --child ...`) imports no other command's module.
    code = (
        "import sys; from emo.cli import main; main(['bench', 'model', '--frames', '0']); "
        "print(sorted(m for m in ('emo.data.cli', 'emo.eval.cli', 'emo.training.cli') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
