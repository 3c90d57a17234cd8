"""Recreate the small face/audio test fixtures from the full-size originals (see SOURCES.md).

    python tests/data/make_face_audio_fixtures.py /path/to/fixtures

Portraits are downscaled to at most 512 px, one frame of the 1080x1920 small-face video is kept at
full size, two talking-head clips are trimmed to 4 s (video only), and one speech wav is trimmed to 3 s.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

from emo.media import VideoWriter, iter_video_frames, load_image

HERE = Path(__file__).parent
PORTRAITS = ["child_photo.jpg", "stylized_man.png", "pencil_sketch.jpg", "statue.jpg", "cartoon_woman.png"]
CLIPS = {"face_calm_speech_4s.mp4": "hdtf_speech_512.mp4", "face_expressive_4s.mp4": "expressive_512.mp4"}


def main(root: Path) -> None:
    for name in PORTRAITS:
        image = Image.fromarray(load_image(root / "image" / name))
        image.thumbnail((512, 512), Image.Resampling.LANCZOS)
        out = HERE / f"portrait_{Path(name).stem}.jpg"
        image.save(out, quality=92)
    frames = iter_video_frames(root / "video" / "small_face_1080x1920.mp4")
    for _ in range(25):  # one second in
        frame = next(frames)
    Image.fromarray(frame).save(HERE / "small_face_frame_1080x1920.jpg", quality=90)
    for out, src in CLIPS.items():
        with VideoWriter(HERE / out, 25, 512, 512, overwrite=True, crf=30) as writer:
            for index, frame in enumerate(iter_video_frames(root / "video" / src)):
                if index >= 100:
                    break
                writer.write(frame)
    audio, rate = sf.read(root / "audio" / "speech_en_24k.wav", dtype="float32")
    sf.write(HERE / "speech_en_24k_3s.wav", np.asarray(audio)[: 3 * rate], rate, subtype="PCM_16")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
