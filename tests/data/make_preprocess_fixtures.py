"""Recreate the small preprocessing fixtures from the full-length originals (see SOURCES.md).

    python tests/data/make_preprocess_fixtures.py /path/to/fixtures/video

Trims each video to its first few seconds, optionally downscales, and re-encodes H.264 + AAC with
PyAV, so the tests stay fast while keeping real faces, real audio and the original geometry where
it matters (the 1080x1920 small-face video keeps its size).
"""

from __future__ import annotations

import sys
from pathlib import Path

import av
import numpy as np

# output name -> (source name, seconds kept, output size or None to keep, x264 crf)
FIXTURES = {
    "hdtf_speech_256_4s.mp4": ("hdtf_speech_512.mp4", 4.0, (256, 256), 26),
    "expressive_256_4s.mp4": ("expressive_512.mp4", 4.0, (256, 256), 26),
    "small_face_1080x1920_4s.mp4": ("small_face_1080x1920.mp4", 4.0, None, 32),
}


def trim(src: Path, dst: Path, seconds: float, size: tuple[int, int] | None, crf: int) -> None:
    with av.open(str(src)) as inp:
        vin = inp.streams.video[0]
        ain = inp.streams.audio[0]
        fps = vin.average_rate
        width, height = size or (vin.codec_context.width, vin.codec_context.height)
        with av.open(str(dst), "w") as out:
            vout = out.add_stream("libx264", rate=fps)
            vout.width, vout.height, vout.pix_fmt = width, height, "yuv420p"
            vout.options = {"crf": str(crf), "preset": "medium"}
            aout = out.add_stream("aac", rate=ain.rate)
            aout.layout = ain.layout.name
            for frame in inp.decode(vin):
                if frame.time >= seconds:
                    break
                image = frame.to_ndarray(width=width, height=height, format="rgb24")
                new = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
                out.mux(vout.encode(new))
            out.mux(vout.encode())
            inp.seek(0)
            for frame in inp.decode(ain):
                if frame.time >= seconds:
                    break
                frame.pts = None
                out.mux(aout.encode(frame))
            out.mux(aout.encode())


def main(src_dir: str) -> None:
    here = Path(__file__).parent
    for name, (source, seconds, size, crf) in FIXTURES.items():
        trim(Path(src_dir) / source, here / name, seconds, size, crf)
        print(name, (here / name).stat().st_size)


if __name__ == "__main__":
    main(sys.argv[1])
