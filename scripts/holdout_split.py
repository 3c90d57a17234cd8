"""Split the talking-head videos of a folder into a training set and a held-out validation set.

    python scripts/holdout_split.py VIDEOS_DIR OUT_DIR

Held out (issue 12, never trained on): the last 10 s of each of the three long single-person clips (people the
model knows, speech it never heard) and three whole short clips of people who appear nowhere else (people it
never saw). Writes OUT_DIR/train/ (the rest, long clips cut before their last 10 s) and OUT_DIR/val_known/,
OUT_DIR/val_unseen/; cut clips are re-encoded with their audio (emo.media), the others are copied.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np

from emo.media import VideoWriter, iter_video_frames, load_audio, probe_video

LONG = [
    "DFRF__dataset_vids_cnn2_25fps.mp4",
    "DFRF__dataset_vids_french.mp4",
    "EDTalk__test_data_pose_source2.mp4",
]
UNSEEN = [  # one clip each of people with no other clip in the folder
    "Talking-Face_PC-AVS__Input_00010.mp4",  # Matt Damon
    "Talking-Face_PC-AVS__Pose_Source_00473.mp4",  # Patrick Stewart
    "video-retalking__examples_face_4.mp4",  # woman, dark hair, blue background
]
HELD_OUT_S = 10.0
RATE = 16000


def cut(source: Path, start_s: float, end_s: float, out: Path) -> None:
    info = probe_video(source)
    audio = load_audio(source, RATE)
    frames = iter_video_frames(source)
    first, last = round(start_s * info.fps), round(end_s * info.fps)
    wave = audio[round(first / info.fps * RATE) : round(last / info.fps * RATE)]
    with VideoWriter(
        out, info.fps, info.width, info.height, audio=wave, audio_rate=RATE, overwrite=True
    ) as writer:
        for k, frame in enumerate(frames):
            if k >= last:
                break
            if k >= first:
                writer.write(np.ascontiguousarray(frame))


def main(videos: Path, out: Path) -> None:
    missing = [n for n in LONG + UNSEEN if not (videos / n).is_file()]
    if missing:
        sys.exit(f"holdout_split: {videos} lacks {', '.join(missing)}")
    for name in ("train", "val_known", "val_unseen"):
        (out / name).mkdir(parents=True, exist_ok=True)
    for source in sorted(p for p in videos.iterdir() if p.suffix.lower() in {".mp4", ".mpg", ".mov", ".mkv"}):
        if source.name in LONG:
            duration = probe_video(source).duration_s
            cut(source, 0.0, duration - HELD_OUT_S, out / "train" / f"{source.stem}.mp4")
            cut(source, duration - HELD_OUT_S, duration, out / "val_known" / f"{source.stem}__last10s.mp4")
        elif source.name in UNSEEN:
            shutil.copy2(source, out / "val_unseen" / source.name)
        else:
            shutil.copy2(source, out / "train" / source.name)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python scripts/holdout_split.py VIDEOS_DIR OUT_DIR")
    main(Path(sys.argv[1]), Path(sys.argv[2]))
