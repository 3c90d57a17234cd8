"""Raw talking-head videos -> a training dataset (EMO paper Sec. 4.1; EMO.md §4): runs, resume, shards.

:func:`run_preprocess` lists the input videos, takes this shard's share, skips the videos that are
done and hands the rest to worker processes (emo.data.workers), each video to
emo.data.video_processing.process_video (scene cuts -> clips -> crops and annotations, written
atomically to ``DIR/videos/<video_id>/``). ``DIR/dataset.json`` holds the settings and the audio
encoder's fingerprint; a rerun with others is refused (emo.data.dataset_config).

A rerun skips videos that have a record, so a run killed at any point (even ``kill -9``) resumes where
it stopped and ends with the same dataset as an uninterrupted run. A video that cannot be read gets a
``failed`` record with the reason and the run goes on; so does one whose worker process dies. The
manifest and summary are rebuilt from the records at the end (emo.data.manifest).

``--workers N`` runs N processes; ``--shard i/N`` takes every N-th video of the sorted input list, so a
cluster array job can split the work; the last shard to finish (or ``--merge``) writes the manifest of
all of them. :func:`add_audio_features` gives the clips of a dataset made without an audio encoder
their wav2vec2 features.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from emo.conditioning.audio_front_end import audio_front_end_id, load_audio_front_end
from emo.data import clips as clipfmt
from emo.data import manifest as mf
from emo.data.clip_extraction import write_audio_features
from emo.data.dataset_config import PreprocessConfig, check_dataset_config, check_encoder
from emo.data.video_processing import clear_tmp, process_video, video_id
from emo.data.workers import process_in_workers
from emo.errors import EmoError

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg", ".ts", ".flv"}
LIST_SUFFIXES = {".txt", ".lst", ".list"}


def list_videos(inputs: list[str | os.PathLike]) -> list[Path]:
    """Expand folders (recursively) and list files (one path per line) into sorted, unique video paths."""
    found: dict[str, Path] = {}

    def add(path: Path, origin: str) -> None:
        if not path.is_file():
            raise EmoError(f"video not found: {path} (from {origin})")
        found.setdefault(str(path.resolve()), path.resolve())

    for item in inputs:
        path = Path(item)
        if path.is_dir():
            videos = [
                p for p in sorted(path.rglob("*")) if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file()
            ]
            if not videos:
                raise EmoError(f"no videos ({', '.join(sorted(VIDEO_SUFFIXES))}) under {path}")
            for video in videos:
                add(video, str(path))
        elif path.suffix.lower() in LIST_SUFFIXES and path.is_file():
            for line in path.read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    entry = Path(line)
                    add(entry if entry.is_absolute() else path.parent / entry, str(path))
        elif path.exists():
            add(path, "the command line")
        else:
            raise EmoError(
                f"input not found: {path}; give video files, folders of videos or a .txt list of paths"
            )
    return sorted(found.values())


def parse_shard(text: str | None) -> tuple[int, int]:
    """'i/N' -> (i, N), 0 <= i < N; None -> (0, 1)."""
    if text is None:
        return 0, 1
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not int(match[1]) < int(match[2]):
        raise EmoError(f"--shard must be i/N with 0 <= i < N (e.g. 0/8), got {text!r}")
    return int(match[1]), int(match[2])


def run_preprocess(
    inputs: list[str | os.PathLike],
    root: str | os.PathLike,
    config: PreprocessConfig,
    workers: int = 1,
    shard: str | None = None,
    audio_encoder: str | None = None,
    retry_failed: bool = False,
    device: str = "cpu",
    progress: bool = True,
    process_fn=process_video,
) -> dict:
    """Process every video of ``inputs`` (this shard's share) into ``root``; returns the summary.

    Videos that already have a record are skipped (failed ones too, unless ``retry_failed``).
    ``process_fn`` is what a worker process runs per video: a module-level function with the signature of
    :func:`process_video` (the tests put one there that crashes its worker).
    """
    from tqdm import tqdm

    root = Path(root)
    index, num_shards = parse_shard(shard)
    videos = list_videos(inputs)
    encoder = audio_front_end_id(audio_encoder) if audio_encoder else None
    check_dataset_config(root, config, encoder, audio_encoder)
    mine = videos[index::num_shards]
    if num_shards > 1:
        mf.write_json(
            root / mf.SHARDS / f"{index}-of-{num_shards}.json",
            {"shard": index, "num_shards": num_shards, "video_ids": sorted(video_id(v) for v in mine)},
        )
    # Leftovers of a killed run of this shard: its videos' temp folders (other shards' are theirs).
    clear_tmp(root, {video_id(v) for v in mine})
    todo = []
    for video in mine:
        record_path = root / mf.VIDEOS / video_id(video) / mf.VIDEO_RECORD
        if record_path.is_file():
            if not (retry_failed and mf.read_json(record_path)["status"] == "failed"):
                continue
        todo.append(video)
    logger.info(
        "%d videos in the input%s; %d already done, %d to process",
        len(videos),
        f", {len(mine)} in shard {index}/{num_shards}" if num_shards > 1 else "",
        len(mine) - len(todo),
        len(todo),
    )
    bar = tqdm(total=len(todo), unit="video", disable=not progress or not todo)

    def done(record: dict) -> None:
        _log_record(record)
        bar.update()

    try:
        if todo:
            process_in_workers(todo, root, config, workers, audio_encoder, device, process_fn, done)
    finally:  # also when stopped: the bar's last line comes before emo's one-line message
        bar.close()
    return mf.build_manifest(root)


def _log_record(record: dict) -> None:
    if record["status"] == "ok":
        logger.info(
            "%s: %d clips kept, %d dropped (%.1f s)",
            record["source"],
            len(record["clips"]),
            len(record["dropped"]),
            record["_seconds"],
        )


def add_audio_features(
    root: str | os.PathLike,
    audio_encoder: str,
    shard: str | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> dict:
    """Compute audio features (wav2vec2 or log-mel) for every clip that has audio but none yet; returns the
    summary.

    The encoder must be the one dataset.json records (if any: then it records this one), so that all
    features come from one model.

    ``shard`` 'i/N' takes every N-th such clip (cluster array jobs); each feature file is written
    atomically, so a killed run just resumes.
    """
    from tqdm import tqdm

    from emo.media import load_audio

    root = Path(root)
    index, num_shards = parse_shard(shard)
    existing = mf.read_json(root / mf.DATASET_CONFIG)
    check_encoder(root, existing, audio_front_end_id(audio_encoder), audio_encoder, adding=True)
    clips = [c for c in mf.read_manifest(root) if c["has_audio"]]
    clips = [c for c in clips[index::num_shards] if not (root / c["path"] / clipfmt.AUDIO_FEATURES).is_file()]
    if not clips:
        logger.info("every clip with audio already has audio features")
        return mf.build_manifest(root)
    encoder = load_audio_front_end(audio_encoder, device=device)
    for clip in tqdm(clips, unit="clip", disable=not progress):
        directory = root / clip["path"]
        wave = load_audio(directory / clipfmt.AUDIO, clipfmt.AUDIO_RATE)
        write_audio_features(directory, wave, clip["fps"], clip["num_frames"], encoder)
    return mf.build_manifest(root)
