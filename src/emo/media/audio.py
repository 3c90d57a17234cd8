"""Audio in (PyAV): any format FFmpeg reads, resampled to mono at the rate asked for."""

from __future__ import annotations

import logging
import os

import numpy as np

from emo.errors import EmoError
from emo.media.files import AUDIO_FORMATS, check_input, decode_reason, open_container

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# Audio
# --------------------------------------------------------------------------------------------------


def load_audio(path: str | os.PathLike, sample_rate: int = 16000) -> np.ndarray:
    """Decode the first audio stream of ``path`` to float32 mono at ``sample_rate``, values in [-1, 1].

    Works for wav, mp3, m4a, flac, ogg and the audio track of mp4/mov (anything FFmpeg decodes).
    Channels are downmixed by averaging. Silence is valid. Raises EmoError naming the file for a missing,
    empty (0 bytes), corrupt or unsupported file, a file with no audio stream, or zero-length audio.
    """
    import av

    path = check_input(path, "audio")
    with open_container(path, "audio") as container:
        if not container.streams.audio:
            raise EmoError(f"no audio stream in {path}; give a file with sound ({AUDIO_FORMATS})")
        stream = container.streams.audio[0]
        # Keep the channels (planar float) and resample the rate only; we average the channels ourselves
        # because FFmpeg's default downmix matrix differs by layout.
        resampler = av.AudioResampler(format="fltp", layout=None, rate=sample_rate)
        chunks: list[np.ndarray] = []
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().mean(axis=0))  # (C, N) -> (N,)
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().mean(axis=0))
        except (av.FFmpegError, ValueError) as exc:
            raise EmoError(f"cannot decode audio {path}: corrupt data ({decode_reason(exc)})") from None
    if not chunks or sum(len(c) for c in chunks) == 0:
        raise EmoError(f"audio {path} has zero length; give a file with at least a few samples")
    audio = np.concatenate(chunks).astype(np.float32, copy=False)
    if not np.all(np.isfinite(audio)):
        raise EmoError(f"cannot decode audio {path}: it contains NaN/inf samples")
    return np.clip(audio, -1.0, 1.0)
