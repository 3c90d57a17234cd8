"""Videos run in worker processes, and a worker that dies costs only its video (EMO.md §4).

Videos are always processed in worker processes, even with ``--workers 1``: a native crash in FFmpeg
or MediaPipe, or the out-of-memory killer, then ends one worker, whose video gets a ``failed`` record
(``worker crashed``), and the run goes on. What a worker runs must be importable at module level (the
pool uses the spawn context).

Stopping (Ctrl-C, SIGTERM, SIGHUP) stops the workers too, whether or not they got the signal themselves,
and removes the work in progress of every video, so a stopped run leaves no temporary folder.
"""

from __future__ import annotations

import logging
from pathlib import Path

from emo.data import manifest as mf
from emo.data.dataset_config import PreprocessConfig
from emo.data.video_processing import Tools, clear_tmp, commit, tmp_dir, video_id
from emo.errors import EmoError

logger = logging.getLogger(__name__)


CRASHED = "worker crashed"  # the error of a video whose worker process died while processing it

_WORKER_TOOLS: Tools | None = None
_WORKER_ERROR: Exception | None = None


def _worker_init(audio_encoder: str | None, device: str, single_threaded: bool, log_level: int) -> None:
    global _WORKER_TOOLS, _WORKER_ERROR
    from emo.termination import raise_on_termination

    raise_on_termination()  # a worker stopped by SIGTERM removes its video's temporary folder, as for Ctrl-C
    logging.basicConfig(level=log_level, format="%(message)s")
    if single_threaded:
        _single_threaded()
    try:
        _WORKER_TOOLS = Tools(audio_encoder, device)
    except Exception as exc:  # raised by the jobs: a failing initializer would break the pool, like a crash
        _WORKER_ERROR = exc


def _worker_ready() -> None:
    if _WORKER_ERROR is not None:
        raise _WORKER_ERROR


def _worker_run(process_fn, source: str, root: str, config: PreprocessConfig) -> dict:
    _worker_ready()
    return process_fn(Path(source), Path(root), config, _WORKER_TOOLS)


def process_in_workers(
    videos: list[Path],
    root: Path,
    config: PreprocessConfig,
    workers: int,
    audio_encoder: str | None,
    device: str,
    process_fn,
    done,
) -> None:
    """Run ``process_fn`` on every video in worker processes; ``done(record)`` as each one finishes.

    Even a single worker is a separate process: a native crash (a segfault in FFmpeg or MediaPipe, the
    out-of-memory killer) then ends that process only. The pool is restarted and the videos that were in
    flight are run again one at a time, so the one that crashes is known; it gets a failed record like a
    corrupt file and the run goes on.
    """
    import multiprocessing
    from collections import deque

    # spawn, not fork: MediaPipe and torch hold threads that a fork would copy in a broken state.
    context = multiprocessing.get_context("spawn")
    size = min(workers, len(videos))
    # Threads per worker are set once per run, so a video retried alone gives the same bytes.
    initargs = (audio_encoder, device, size > 1, logging.getLogger().getEffectiveLevel())
    job = (process_fn, root, config)
    pending, suspects = deque(videos), deque()
    while pending or suspects:
        try:
            if suspects:
                lost = _run_pool(suspects, 1, context, initargs, job, done)
            else:
                lost = _run_pool(pending, min(size, len(pending)), context, initargs, job, done)
        except BaseException:  # stopped (Ctrl-C, SIGTERM): the workers are gone; so is their work in progress
            clear_tmp(root, {video_id(v) for v in videos})
            raise
        clear_tmp(root, {video_id(v) for v in lost})  # what the dead and the stopped workers left
        if len(lost) == 1:
            done(_crash_record(lost[0], root))
        else:
            suspects.extend(sorted(lost))


def _run_pool(queue, slots: int, context, initargs: tuple, job: tuple, done) -> list[Path]:
    """Process the videos of ``queue`` (a deque, consumed) in a pool of ``slots`` workers until it is
    empty or a worker dies; returns the videos whose jobs the dead pool failed."""
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    process_fn, root, config = job
    running: dict = {}
    lost: list[Path] = []

    def collect(future) -> bool:
        video = running.pop(future)
        try:
            record = future.result()
        except BrokenProcessPool:  # its worker, or another one, died: the pool fails every job it has
            lost.append(video)
            return False
        done(record)
        return True

    # Not `with`: on Ctrl-C / SIGTERM its exit would wait for every video in flight to finish.
    pool = ProcessPoolExecutor(slots, mp_context=context, initializer=_worker_init, initargs=initargs)
    try:
        _start_workers(pool, slots)
        broken = False
        while queue and not broken:
            # At most one job per worker, so the jobs a broken pool fails are the ones it was running.
            while queue and len(running) < slots:
                try:
                    running[pool.submit(_worker_run, process_fn, str(queue[0]), str(root), config)] = queue[0]
                except BrokenProcessPool:
                    broken = True
                    break
                queue.popleft()
            if running:
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                broken = not all([collect(future) for future in finished]) or broken
        for future in list(running):  # the last jobs; after a break they end at once
            collect(future)
        pool.shutdown()
    except BaseException:  # also Ctrl-C, SIGTERM
        _stop_workers(pool)
        raise
    return lost


def _stop_workers(pool, grace_s: float = 10.0) -> None:
    """SIGTERM every worker (each removes its temporary folder, see _worker_init), SIGKILL the ones still
    there after ``grace_s``: SIGTERM sent to the main process alone (``timeout``, ``docker stop``) reaches
    no worker."""
    import time

    # ProcessPoolExecutor has no public way to stop its workers before Python 3.14 (terminate_workers).
    processes = list((pool._processes or {}).values())
    manager = pool._executor_manager_thread  # shutdown() forgets it
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + grace_s
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()
    # The pool's manager thread joins the workers too. Two threads reaping one process race: the loser's
    # waitpid fails (ECHILD) and its is_alive() says True until the winner records the exit code, which it
    # does before it ends. Seen once in CI: a stopped worker still "alive" after preprocess returned.
    if manager is not None:
        manager.join(max(1.0, deadline - time.monotonic()))


def _start_workers(pool, workers: int) -> None:
    """Wait until the workers have loaded their tools; one that dies then is no video's fault."""
    from concurrent.futures.process import BrokenProcessPool

    try:
        for future in [pool.submit(_worker_ready) for _ in range(workers)]:
            future.result()
    except BrokenProcessPool:
        raise EmoError(
            "a preprocessing worker process died while loading MediaPipe / the audio encoder, before any "
            "video (out of memory? a broken install?)"
        ) from None


def _crash_record(source: Path, root: Path) -> dict:
    """Record as failed a video whose worker died while processing it alone (it wrote no record)."""
    vid = video_id(source)
    error = (
        f"{CRASHED}: the worker process died while processing {source} (a native crash in FFmpeg or "
        "MediaPipe, or killed, e.g. by the out-of-memory killer)"
    )
    logger.warning("%s: failed: %s", source, error)
    record = {"video_id": vid, "source": str(source), "status": "failed", "error": error}
    record.update(clips=[], dropped=[])
    tmp = tmp_dir(root, vid)
    tmp.mkdir(parents=True)
    mf.write_json(tmp / mf.VIDEO_RECORD, record)
    commit(tmp, root / mf.VIDEOS / vid)
    return {**record, "_seconds": 0.0}


def _single_threaded() -> None:
    # N worker processes on N cores: threads inside each would only fight over the same cores.
    import cv2
    import torch

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
