"""Benchmark `emo preprocess`: seconds of source video processed per wall-clock second.

  emo bench preprocess VIDEOS... [--workers 2] [--size 512] [--repeat 2]

Processes the videos into a temporary dataset without the audio encoder, with N worker processes, and
prints video seconds / wall second (the target is >= 1x real time on 2 cores); per-video times are
logged as they finish. ``--repeat`` lists each input that many times (under different names) so that N
workers have work to share. Measures, never asserts.

VIDEOS has no default: throughput depends on the videos' resolution and face size, so say what you
measure. docs/benchmarks.md measured the three preprocessing fixtures of a checkout (two 256² talking
heads and the 1080x1920 small-face video, 4 s each):
``tests/data/{hdtf_speech_256_4s,expressive_256_4s,small_face_1080x1920_4s}.mp4``.
"""

from __future__ import annotations

FIXTURES = "{hdtf_speech_256_4s,expressive_256_4s,small_face_1080x1920_4s}.mp4"  # shell brace form

HELP = "preprocessing throughput: seconds of video per wall-clock second (no audio encoder)"


def add_arguments(parser) -> None:
    parser.add_argument(
        "videos", nargs="*", metavar="VIDEOS", help="videos with speech to process (required)"
    )
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--size", type=int, default=512, help="output size (default 512)")
    parser.add_argument(
        "--repeat", type=int, default=2, help="process each input this many times (default 2)"
    )
    parser.add_argument("--keep", metavar="DIR", help="write the dataset here instead of a temporary folder")


def run(args) -> int:
    import shutil
    import tempfile
    import time
    from pathlib import Path

    from emo.data.dataset_config import PreprocessConfig
    from emo.data.preprocess import run_preprocess
    from emo.errors import EmoError
    from emo.media import probe_video
    from emo.resources import peak_rss_mib

    videos = [Path(v) for v in args.videos]
    if not videos:
        raise EmoError(f"pass VIDEOS to process, e.g. in a checkout the fixtures tests/data/{FIXTURES}")
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="emo-bench-preprocess-"))
    try:
        inputs = work / "inputs"
        inputs.mkdir(parents=True, exist_ok=True)
        total_s = 0.0
        for r in range(args.repeat):
            for v in videos:
                copy = inputs / f"{v.stem}-{r}{v.suffix}"
                if not copy.exists():
                    shutil.copyfile(v, copy)  # a copy, not a link: links resolve to one video id
                total_s += probe_video(v).duration_s
        config = PreprocessConfig(size=args.size)
        started = time.perf_counter()
        summary = run_preprocess([inputs], work / "dataset", config, workers=args.workers, progress=False)
        wall = time.perf_counter() - started
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(
        f"videos: {len(videos)} x {args.repeat} = {total_s:.1f} s of video; workers {args.workers}; size {args.size}"
    )
    print(
        f"clips kept {summary['clips_kept']} ({summary['hours_kept'] * 3600:.1f} s), dropped {summary['clips_dropped']}, "
        f"failed videos {summary['videos_failed']}"
    )
    print(
        f"wall {wall:.1f} s -> {total_s / wall:.2f} s of video per second ({total_s / wall:.2f}x real time)"
    )
    print(f"peak RSS of the main process {peak_rss_mib():.0f} MiB (workers are separate processes)")
    return 0
