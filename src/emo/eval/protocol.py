"""The HDTF-style test protocol: a test list -> generation jobs with fixed seeds + a reference folder.

A test list is a JSON list (or CSV with a header) of items::

    [{"id": "WRA_Obama_000", "image": "refs/WRA_Obama_000.png", "audio": "audio/WRA_Obama_000.wav",
      "video": "gt/WRA_Obama_000.mp4", "seed": 0}, ...]

``id`` defaults to the video's file stem, ``seed`` to the item's index (fixed either way, so two
checkpoints see the same noise). Relative paths are relative to the list's folder.

``emo evaluate protocol jobs LIST GENERATED_DIR > jobs.json`` writes the ``emo generate --batch`` jobs
({"image", "audio", "out": GENERATED_DIR/<id>.mp4, "seed"}); ``emo evaluate protocol reference LIST
REFERENCE_DIR`` fills REFERENCE_DIR with links <id>.mp4 -> ground-truth video and <id>.<ext> ->
reference image, the layout ``emo evaluate --reference`` pairs by stem.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

from emo.errors import EmoError


@dataclass(frozen=True)
class TestItem:
    id: str  # file stem shared by the generated and ground-truth videos
    image: Path  # reference portrait (usually the first ground-truth frame)
    audio: Path  # driving audio (usually the ground-truth video's own track)
    video: Path  # ground-truth video
    seed: int  # generation seed


def read_test_list(path: str | Path) -> list[TestItem]:
    path = Path(path)
    if not path.is_file():
        raise EmoError(f"test list {path}: no such file")
    text = path.read_text()
    try:
        rows = list(csv.DictReader(text.splitlines())) if path.suffix.lower() == ".csv" else json.loads(text)
    except json.JSONDecodeError as exc:
        raise EmoError(f"test list {path} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    if not isinstance(rows, list) or not rows:
        raise EmoError(f"test list {path} must hold a non-empty list of items")
    items, seen = [], set()
    for index, row in enumerate(rows):
        if not isinstance(row, dict) or not all(row.get(k) for k in ("image", "audio", "video")):
            raise EmoError(f"test list {path}: item {index} needs image, audio and video")

        def resolve(value: str) -> Path:
            p = Path(value)
            return p if p.is_absolute() else path.parent / p

        video = resolve(row["video"])
        item_id = str(row.get("id") or video.stem)
        if item_id in seen:
            raise EmoError(f"test list {path}: id {item_id!r} appears twice; ids name the output files")
        seen.add(item_id)
        seed = row.get("seed")
        items.append(TestItem(item_id, resolve(row["image"]), resolve(row["audio"]), video,
                              int(seed) if seed not in (None, "") else index))  # fmt: skip
    return items


def generation_jobs(items: list[TestItem], generated_dir: str | Path) -> list[dict]:
    """``emo generate --batch`` jobs writing GENERATED_DIR/<id>.mp4 with each item's fixed seed."""
    out = Path(generated_dir)
    return [{"image": str(i.image), "audio": str(i.audio), "out": str(out / f"{i.id}.mp4"), "seed": i.seed}
            for i in items]  # fmt: skip


def link_reference(items: list[TestItem], reference_dir: str | Path) -> None:
    """REFERENCE_DIR/<id>.<ext> links to each ground-truth video and reference image."""
    ref = Path(reference_dir)
    ref.mkdir(parents=True, exist_ok=True)
    for item in items:
        for source in (item.video, item.image):
            if not source.is_file():
                raise EmoError(f"test item {item.id}: {source} does not exist")
            link = ref / f"{item.id}{source.suffix.lower()}"
            if link.is_symlink() or link.exists():
                link.unlink()
            os.symlink(source.resolve(), link)
