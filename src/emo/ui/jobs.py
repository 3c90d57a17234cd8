"""What the page runs: generation jobs on the one loaded pipeline, one at a time, cancellable, in temporary
folders that are removed when the job ends. Free of Gradio, so it can be tested without a browser."""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from emo.errors import EmoError
from emo.generation.pipeline import EMOPipeline, GenerationOptions, GenerationProgress, GenerationResult


class Cancelled(Exception):
    """Raised in the pipeline's progress callback to stop a job; the pipeline then leaves no output."""


@dataclass(frozen=True)
class JobResult:
    """One audio track's outcome: a video, or the one-line message of why there is none."""

    audio: Path
    result: GenerationResult | None
    error: str | None


class GenerationService:
    """One loaded pipeline serving the page's jobs.

    Jobs of all sessions share the device one at a time. Gradio's queue already runs one at a time, but it
    frees a cancelled job's slot at once, while the job's thread only stops at its next denoising step: the
    lock keeps the next job off the device until then.
    """

    def __init__(self, pipe: EMOPipeline, workdir: str | Path):
        self.pipe = pipe
        self.workdir = Path(workdir)
        self._device = threading.Lock()
        self._cancel: dict[str, threading.Event] = {}  # session -> its running job's cancel flag

    def run(
        self,
        session: str,
        image: str | Path,
        tracks: list[str | Path],
        opts: GenerationOptions,
        on_progress: Callable[[int, GenerationProgress], None] = lambda index, progress: None,
    ) -> Iterator[JobResult]:
        """One video per audio track for ``image``, each yielded as it is finished.

        A track with bad input (no face, corrupt or over-long audio, ...) yields its EmoError message and the
        batch goes on. :meth:`cancel` stops the job at the next denoising step (:class:`Cancelled`). The
        videos live in a temporary folder that is removed when the generator ends: copy a video before
        asking for the next one.
        """
        if not tracks:
            raise EmoError("no audio: upload an audio file or record one")
        opts.validate()
        cancel = threading.Event()
        self._cancel[session] = cancel
        folder = Path(tempfile.mkdtemp(prefix="job-", dir=self.workdir))
        try:
            for index, track in enumerate(tracks):
                track = Path(track)

                def callback(progress: GenerationProgress, index=index) -> None:
                    if cancel.is_set():
                        raise Cancelled
                    on_progress(index, progress)

                out = folder / str(index) / f"{track.stem}.mp4"  # the download keeps the audio's name
                try:
                    with self._device:
                        if cancel.is_set():
                            raise Cancelled
                        result = self.pipe.generate(
                            image, track, out, opts, progress=False, callback=callback
                        )
                except EmoError as exc:
                    yield JobResult(track, None, str(exc))
                    continue
                yield JobResult(track, result, None)
        finally:
            if self._cancel.get(session) is cancel:
                del self._cancel[session]
            shutil.rmtree(folder, ignore_errors=True)

    def cancel(self, session: str) -> bool:
        """Stop ``session``'s running job at its next step; False if it has none."""
        cancel = self._cancel.get(session)
        if cancel is None:
            return False
        cancel.set()
        return True
