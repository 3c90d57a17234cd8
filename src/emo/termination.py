"""SIGTERM and SIGHUP end a command the way Ctrl-C does: by an exception, so every cleanup path runs.

Cluster schedulers, ``timeout`` and ``docker stop`` send SIGTERM; closing a terminal sends SIGHUP. Python's
default for both is to die on the spot, which skips the ``with`` / ``try`` blocks that remove temporary
files. :func:`raise_on_termination` makes them raise :class:`Terminated`, a kind of KeyboardInterrupt, so
the code that already cleans up after Ctrl-C cleans up after them too; ``emo`` then exits with 128 + the
signal number. Training wants to finish its step and checkpoint first: :class:`DeferredTermination`.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

SIGNALS = (signal.SIGTERM, signal.SIGHUP)  # SIGINT already raises KeyboardInterrupt


class Terminated(KeyboardInterrupt):
    """The process was asked to stop by a signal (SIGTERM, SIGHUP).

    A KeyboardInterrupt, so ``except KeyboardInterrupt`` cleanups (and worker pools) treat it as Ctrl-C.
    """

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    def __str__(self) -> str:
        return self.name


def _raise(signum, frame) -> None:
    raise Terminated(signum)


def raise_on_termination() -> None:
    """From now on SIGTERM / SIGHUP raise :class:`Terminated` in the main thread (call from the main thread)."""
    for signum in SIGNALS:
        signal.signal(signum, _raise)


@contextlib.contextmanager
def restored_handlers() -> Iterator[None]:
    """Put the signal handlers back as they were on leaving (tests call ``emo.cli.main`` in-process)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {signum: signal.getsignal(signum) for signum in SIGNALS}
    try:
        yield
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)


class DeferredTermination:
    """Inside the ``with`` block SIGTERM / SIGHUP only set :attr:`signum`; the code polls it at a safe point.

    A training step in flight finishes, then the loop checkpoints and raises :class:`Terminated` itself.
    Outside the main thread (where Python delivers no signals) it does nothing.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._saved: dict = {}

    def _note(self, signum, frame) -> None:
        self.signum = self.signum or signum

    def __enter__(self) -> DeferredTermination:
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._saved[signum] = signal.signal(signum, self._note)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._saved.items():
            signal.signal(signum, handler)
        self._saved = {}
