"""On-disk layout of one preprocessed clip, and fast random access to its frames.

A clip is a directory::

    frames.mjpeg                 the frames as JPEG (quality 95) images, concatenated back to back
    meta.npz                     per-frame arrays (see ``META_FIELDS``) + frame byte offsets + region mask
    audio.wav                    16 kHz mono PCM-16 (only when the source had audio)
    audio_features.safetensors   audio features "features": (F, L, D) float16 (optional, see below)
    latents.safetensors          the codec's latents of every frame "latents": (F, C, h, w) float16 (optional)

Why concatenated JPEG with an offset table: a 512² RGB frame is 768 KiB raw; JPEG q95 is ~50 KiB on
our talking-head fixtures (15x smaller; 250 h at 30 fps would be ~21 TB raw, ~1.4 TB as JPEG), and
decoding one 512² q95 JPEG costs ~1.5-2 ms on one core (16 contiguous frames: ~35 ms), far less than
a training step spends per frame. Keeping the JPEGs in one
file per clip (rather than a folder of files) means 16 contiguous frames are one seek + one read, and a
250 h dataset is ~75k files instead of ~27M. The byte stream is a valid MJPEG stream (``ffplay -f mjpeg``
plays it). An uncompressed uint8 array would be faster to read only marginally (memory-map, no decode)
but 10-20x larger, and disk bandwidth, not decode, then becomes the bottleneck.

Audio features are float16 to halve their size (13 × 768 values per frame for wav2vec2-base, ~20 KiB
per frame as float16); readers return float32.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

# cv2 and soundfile are imported inside the functions that use them: `emo --help` and the `emo preprocess`
# parser import this module, and stay quick.

FRAMES = "frames.mjpeg"
META = "meta.npz"
AUDIO = "audio.wav"
AUDIO_FEATURES = "audio_features.safetensors"
LATENTS = "latents.safetensors"  # the latent cache (emo.data.latents): "latents" (F, C, h, w) float16
AUDIO_RATE = 16000  # Hz, what wav2vec2 expects

# meta.npz fields, all per frame of the clip unless noted.
META_FIELDS = {
    "frame_offsets": "(F+1,) int64 byte offsets of each JPEG in frames.mjpeg",
    "boxes": "(F, 4) float32 face box x0, y0, x1, y1 in crop pixels (interpolated where not found)",
    "landmarks": "(F, 478, 3) float32 MediaPipe face-mesh landmarks, x, y in crop pixels, z relative",
    "pose": "(F, 3) float32 head yaw, pitch, roll in degrees",
    "speed": "(F,) float32 head rotation speed in degrees per frame (at the dataset fps)",
    "face_found": "(F,) bool whether the face was found in that frame (else values are interpolated)",
    "mask": "(S, S) uint8 face-region mask of the clip (1 inside the union of its face boxes)",
    "crop_box": "(4,) float32 the square crop x0, y0, x1, y1 in source-video pixels",
}


def encode_jpeg(image_rgb: np.ndarray, quality: int = 95) -> bytes:
    import cv2

    # cvtColor, not image[..., ::-1]: the strided numpy copy costs ~10x more on a 512² frame.
    bgr = cv2.cvtColor(np.ascontiguousarray(image_rgb), cv2.COLOR_RGB2BGR)
    ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return data.tobytes()


def decode_jpeg(data: bytes) -> np.ndarray:
    """JPEG bytes -> (H, W, 3) uint8 RGB."""
    import cv2

    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("corrupt JPEG frame")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class FrameStreamWriter:
    """Append JPEG frames to ``frames.mjpeg`` in ``clip_dir``; ``offsets`` is the table for meta.npz."""

    def __init__(self, clip_dir: str | os.PathLike, quality: int = 95):
        self.path = Path(clip_dir) / FRAMES
        self.quality = quality
        self._file = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        self.offsets = [0]

    def write(self, image_rgb: np.ndarray) -> None:
        data = encode_jpeg(image_rgb, self.quality)
        self._file.write(data)
        self.offsets.append(self.offsets[-1] + len(data))

    def close(self) -> np.ndarray:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        return np.asarray(self.offsets, dtype=np.int64)

    def abort(self) -> None:
        """Close without finishing (the folder is being thrown away)."""
        if not self._file.closed:
            self._file.close()

    @property
    def num_frames(self) -> int:
        return len(self.offsets) - 1


def read_frames(clip_dir: str | os.PathLike, indices, offsets: np.ndarray) -> np.ndarray:
    """Decode the frames at ``indices`` of a clip: (N, H, W, 3) uint8 RGB.

    Contiguous runs are read with one ``read`` call; the file is opened per call (no handle kept), so
    this is safe in DataLoader worker processes.
    """
    indices = [int(i) for i in indices]
    frames: list[np.ndarray | None] = [None] * len(indices)
    order = sorted(range(len(indices)), key=lambda k: indices[k])
    with open(Path(clip_dir) / FRAMES, "rb") as f:
        k = 0
        while k < len(order):
            # Extend a run of consecutive (or repeated) indices.
            end = k + 1
            while end < len(order) and indices[order[end]] - indices[order[end - 1]] <= 1:
                end += 1
            first, last = indices[order[k]], indices[order[end - 1]]
            f.seek(int(offsets[first]))
            blob = f.read(int(offsets[last + 1] - offsets[first]))
            for j in order[k:end]:
                i = indices[j]
                start = int(offsets[i] - offsets[first])
                frames[j] = decode_jpeg(blob[start : start + int(offsets[i + 1] - offsets[i])])
            k = end
    return np.stack(frames)  # (N, H, W, 3)


def write_audio(path: str | os.PathLike, waveform: np.ndarray, sample_rate: int = AUDIO_RATE) -> None:
    import soundfile

    soundfile.write(str(path), np.clip(waveform, -1.0, 1.0), sample_rate, subtype="PCM_16", format="WAV")
