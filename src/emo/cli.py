"""`emo` command line: one subcommand per job, each living in its own module.

A command module exposes ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
It keeps heavy imports (torch, diffusers) inside ``run`` so ``emo --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from emo.errors import EmoError
from emo.termination import Terminated, raise_on_termination, restored_handlers

# name -> module; add a line here when a command exists.
COMMANDS: dict[str, str] = {
    "generate": "emo.generation.cli",
    "preprocess": "emo.data.cli",
    "bench": "emo.bench",
    "train": "emo.training.cli",
    "evaluate": "emo.eval.cli",
    "ui": "emo.ui.cli",
}
# Maintainer tools: they run like commands but are not listed in `emo --help`.
HIDDEN_COMMANDS: dict[str, str] = {
    "dev": "emo.dev",
}


def add_subcommands(subparsers, table: dict[str, str], hidden: bool = False) -> None:
    for name, module_name in table.items():
        module = importlib.import_module(module_name)
        listed = {} if hidden else {"help": module.HELP}  # argparse lists a subcommand given any help=
        parser = subparsers.add_parser(
            name,
            **listed,
            description=(module.__doc__ or module.HELP).strip(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(parser)
        parser.set_defaults(_run=module.run)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The `emo` parser: every command, or with `only`, that one command alone (see `main`)."""
    parser = argparse.ArgumentParser(
        prog="emo",
        description="EMO: one portrait + a speech or singing track -> a talking/singing portrait video.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    if only:
        add_subcommands(
            subparsers, {only: {**COMMANDS, **HIDDEN_COMMANDS}[only]}, hidden=only in HIDDEN_COMMANDS
        )
    else:
        add_subcommands(subparsers, COMMANDS)
        add_subcommands(subparsers, HIDDEN_COMMANDS, hidden=True)
    return parser


def _command_of(argv: list[str]) -> str | None:
    """The command `argv` runs, if it names one (and asks for no top-level --help first)."""
    for arg in argv:
        if arg in ("-h", "--help"):
            return None
        if not arg.startswith("-"):
            return arg if arg in COMMANDS or arg in HIDDEN_COMMANDS else None
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Running a command builds only its own parser, so no other command's module is imported: faster, and
    # a benchmark's child process (`emo bench TARGET --child ...`) holds only what its measurement needs.
    parser = build_parser(only=_command_of(argv))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s" if args.verbose else "%(message)s",
    )
    with restored_handlers():
        raise_on_termination()  # SIGTERM / SIGHUP unwind like Ctrl-C, so temporary files are removed
        try:
            return int(args._run(args) or 0)
        except EmoError as exc:
            print(f"emo: error: {exc}", file=sys.stderr)
            return 2
        except Terminated as exc:
            print(f"emo: terminated ({exc.name})", file=sys.stderr)
            return 128 + exc.signum
        except KeyboardInterrupt:
            print("emo: interrupted", file=sys.stderr)
            return 130
        except OSError as exc:
            from emo.media import USER_WRITE_ERRNOS, write_error

            if exc.errno not in USER_WRITE_ERRNOS:  # a full disk is the user's to fix, not a bug
                return _internal_error(exc)
            print(f"emo: error: {write_error(exc, exc.filename)}", file=sys.stderr)
            return 2
        except Exception as exc:
            return _internal_error(exc)


def _internal_error(exc: Exception) -> int:
    """An internal bug: one line by default, the traceback on request."""
    if os.environ.get("EMO_DEBUG"):
        raise exc
    print(
        f"emo: internal error: {type(exc).__name__}: {exc} (set EMO_DEBUG=1 for the traceback)",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
