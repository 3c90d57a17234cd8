"""The dataset directory: per-video records, the merged manifest and the summary.

Layout of a dataset made by ``emo preprocess``::

    DIR/dataset.json             preprocessing settings (fps, size, thresholds) and the audio encoder's
                                 fingerprint (or null); a rerun must match them
    DIR/videos/<video_id>/       one folder per source video, renamed into place only when complete
        video.json               the video's record: status ok/failed, clips kept, clips dropped + reason
        <clip_id>/               one folder per kept clip (layout in emo.data.clips)
    DIR/manifest.jsonl           one line per kept clip, sorted by clip id (rebuilt from video.json files)
    DIR/summary.json             clips kept / dropped per reason, hours kept, failed videos
    DIR/shards/<i>-of-<N>.json   which videos each shard was given (to tell when all shards are done)
    DIR/tmp/                     work in progress; never read, cleaned on the next run

Only ``video.json`` files are the source of truth: the manifest and summary are derived from them and
can be rebuilt at any time (``emo preprocess --merge --out DIR``), which is how shards are merged and
why a killed run never leaves a partial manifest behind.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path

from emo.data.clips import AUDIO_FEATURES, LATENTS
from emo.errors import EmoError
from emo.media import atomic_write_bytes

logger = logging.getLogger(__name__)

DATASET_CONFIG = "dataset.json"
MANIFEST = "manifest.jsonl"
SUMMARY = "summary.json"
VIDEOS = "videos"
VIDEO_RECORD = "video.json"
SHARDS = "shards"
TMP = "tmp"


def write_json(path: str | os.PathLike, data) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())


def read_json(path: str | os.PathLike):
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise EmoError(f"{path} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EmoError(f"{path} is not valid JSON ({exc}); delete it and rerun emo preprocess") from None


def video_records(root: str | os.PathLike) -> list[dict]:
    """Every completed video record of a dataset, sorted by video id."""
    videos = Path(root) / VIDEOS
    if not videos.is_dir():
        return []
    records = []
    for entry in sorted(videos.iterdir()):
        record_path = entry / VIDEO_RECORD
        if record_path.is_file():
            records.append(read_json(record_path))
    return records


def build_manifest(root: str | os.PathLike) -> dict:
    """Rebuild ``manifest.jsonl`` and ``summary.json`` from the video records; returns the summary.

    ``has_audio_features`` and ``has_latents`` are read from the clip folders, so features and latents added
    later show up here.
    """
    root = Path(root)
    records = video_records(root)
    clips: list[dict] = []
    dropped: Counter[str] = Counter()
    dropped_hours: Counter[str] = Counter()
    failed = []
    hours_in = 0.0
    for record in records:
        if record["status"] != "ok":
            failed.append(
                {"source": record["source"], "video_id": record["video_id"], "error": record["error"]}
            )
            continue
        hours_in += record["info"]["duration_s"] / 3600
        for drop in record["dropped"]:
            dropped[drop["reason"]] += 1
            dropped_hours[drop["reason"]] += (drop["end_s"] - drop["start_s"]) / 3600
        for clip in record["clips"]:
            clip = dict(clip)
            clip["has_audio_features"] = (root / clip["path"] / AUDIO_FEATURES).is_file()
            clip["has_latents"] = (root / clip["path"] / LATENTS).is_file()
            clips.append(clip)
    clips.sort(key=lambda c: c["clip_id"])
    lines = "".join(json.dumps(c, sort_keys=True) + "\n" for c in clips)
    atomic_write_bytes(root / MANIFEST, lines.encode())
    summary = {
        "videos_ok": len(records) - len(failed),
        "videos_failed": len(failed),
        "failed": failed,
        "hours_input": round(hours_in, 6),
        "clips_kept": len(clips),
        "hours_kept": round(sum(c["num_frames"] / c["fps"] for c in clips) / 3600, 6),
        "clips_with_audio": sum(c["has_audio"] for c in clips),
        "clips_with_audio_features": sum(c["has_audio_features"] for c in clips),
        "clips_with_latents": sum(c["has_latents"] for c in clips),
        "clips_dropped": dict(sorted(dropped.items())),
        "hours_dropped": {k: round(v, 6) for k, v in sorted(dropped_hours.items())},
        "shards_missing": missing_shards(root),
    }
    write_json(root / SUMMARY, summary)
    return summary


def missing_shards(root: Path) -> list[str]:
    """Shards some run announced (``--shard i/N``) whose videos are not all recorded yet."""
    shard_dir = root / SHARDS
    if not shard_dir.is_dir():
        return []
    done = (
        {p.name for p in (root / VIDEOS).iterdir() if (p / VIDEO_RECORD).is_file()}
        if (root / VIDEOS).is_dir()
        else set()
    )
    missing = []
    counts = set()
    for path in sorted(shard_dir.glob("*.json")):
        shard = read_json(path)
        counts.add(shard["num_shards"])
        if not set(shard["video_ids"]) <= done:
            missing.append(path.stem)
    if counts:
        num = max(counts)
        announced = {p.stem for p in shard_dir.glob("*.json")}
        missing += [f"{i}-of-{num}" for i in range(num) if f"{i}-of-{num}" not in announced]
    return sorted(set(missing))


def read_manifest(root: str | os.PathLike) -> list[dict]:
    """The clip records of a dataset directory; EmoError if it has no manifest."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise EmoError(
            f"no {MANIFEST} in {root}: make the dataset with `emo preprocess VIDEOS... --out {root}` "
            f"(or `emo preprocess --merge --out {root}` after sharded runs)"
        )
    clips = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                clips.append(json.loads(line))
            except json.JSONDecodeError:
                raise EmoError(
                    f"{path} line {number} is not valid JSON; rebuild it with `emo preprocess --merge --out {root}`"
                ) from None
    return clips
