"""`emo bench face`: face analysis throughput (detection + 478-point landmarks + head pose), frames/s.

Frames are decoded before timing (decoding is not face analysis). Three ways are timed on the same
frames, after one warm-up call:

- ``video``: :meth:`FaceAnalyzer.analyze_video` — Face Mesh tracking; the detector runs on the first
  frame and whenever tracking is lost (what preprocessing uses);
- ``video+detect``: the same with the face detector also run every ``--detect-every`` frames to count faces;
- ``image``: :meth:`FaceAnalyzer.analyze` on every frame independently (detector, mesh on a crop, pose).

The process is pinned to ``--cores`` CPU cores (MediaPipe sizes its thread pool from what it can use).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from emo.bench import ASSETS

HELP = "face detection + landmarks + head pose throughput (frames/s) on a 512² 25 fps clip"

DEFAULT_VIDEO = ASSETS / "face_calm_speech_4s.mp4"  # a real talking head: analysis speed depends on the face


def add_arguments(parser) -> None:
    parser.add_argument(
        "--video",
        default=str(DEFAULT_VIDEO),
        help="clip to analyse (default: a shipped 512² 4 s talking head)",
    )
    parser.add_argument("--cores", type=int, default=2, help="CPU cores to pin the process to (default 2)")
    parser.add_argument("--frames", type=int, default=0, help="analyse at most this many frames (0 = all)")
    parser.add_argument("--detect-every", type=int, default=25, help="detector period for video+detect")


def run(args) -> int:
    from emo.errors import EmoError

    if not Path(args.video).is_file():
        raise EmoError(f"benchmark video not found: {args.video}; pass --video PATH (a 512² 25 fps clip)")
    if hasattr(os, "sched_setaffinity"):
        available = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, set(available[: max(1, args.cores)]))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

    from emo.conditioning.face import FaceAnalyzer
    from emo.media import iter_video_frames, probe_video

    info = probe_video(args.video)
    frames = []
    for frame in iter_video_frames(args.video):
        frames.append(frame)
        if args.frames and len(frames) >= args.frames:
            break
    results = {}
    for mode in ("video", "video+detect", "image"):
        with FaceAnalyzer() as analyzer:
            analyzer.analyze(frames[0])  # warm-up: graph construction, model loading
            start = time.perf_counter()
            if mode == "image":
                found = sum(analyzer.analyze(frame) is not None for frame in frames)
            else:
                every = args.detect_every if mode == "video+detect" else 0
                found = sum(o is not None for o in analyzer.analyze_video(frames, detect_every=every))
            elapsed = time.perf_counter() - start
        results[mode] = {"frames_per_s": round(len(frames) / elapsed, 1), "faces_found": found}
        print(
            f"{mode:13s} {len(frames) / elapsed:7.1f} frames/s ({len(frames)} frames "
            f"{info.width}x{info.height} @ {info.fps:g} fps, {cores} cores, face in {found}/{len(frames)})"
        )
    print(json.dumps({"bench": "face", "video": args.video, "cores": cores, "results": results}))
    return 0
