"""What preprocessing worker processes run in the tests. A module of its own, light to import: each
spawned worker imports it by name, and importing the test module would cost every worker torch."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from emo.data.video_processing import process_video


def process_or_crash(source: Path, root: Path, config, tools) -> dict:
    """process_video, except that a video with "crash" in its name kills its worker process, as a segfault in
    FFmpeg or the out-of-memory killer would (run_preprocess(process_fn=...))."""
    if "crash" in source.name:
        os.kill(os.getpid(), signal.SIGKILL)
    return process_video(source, root, config, tools)


def process_on_a_full_disk(source: Path, root: Path, config, tools) -> dict:
    """process_video on a disk that refuses every frame of the clips (ENOSPC), in the worker process."""
    import errno

    from emo.data import clips as clipfmt

    def full(self, image):
        raise OSError(errno.ENOSPC, "No space left on device")

    clipfmt.FrameStreamWriter.write = full
    return process_video(source, root, config, tools)
