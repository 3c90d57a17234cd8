"""A weight-free audio front-end: log-mel frames stacked per video frame.

Same contract as :class:`emo.conditioning.audio_features.AudioEncoder` (wav2vec2):
``frame_features(waveform_16k, fps, num_frames) -> (F, L, D)``, so the AudioProjector's windows
(F, 2m+1, L, D) are built the same way. Here L = ``frames_per_video_frame`` consecutive 10 ms mel frames
and D = ``n_mels``. It needs no download, and runs about 200 times faster than real time on a CPU, which
makes it the front-end for tests, tiny runs, and training before wav2vec2 weights are at hand.

Time grid: mel frame j describes the 10 ms hop slot [j·hop, (j+1)·hop) of the waveform, its 25 ms window
centred on that slot's centre. Video frame i covers [i/fps, (i+1)/fps); it takes the L mel frames at
times centre_i + (k - (L-1)/2)·10 ms for k = 0..L-1, i.e. the L slots around the frame's centre. At 25 fps
these are exactly the four slots inside the frame; at 30 fps (3.3 slots per frame) two of every three
neighbouring frames share their boundary slot. Stacking keeps the 100 Hz detail that interpolating to
the video rate would average away.

Samples outside the waveform count as silence (zeros), so every mel frame is a function of the 400
samples of its own window only: the features of frame i do not depend on the track's length or on audio
further away, and a long track can be computed in pieces with exactly the same result.

The spectrogram and the filterbank are ``transformers.audio_utils``'s (the code behind Whisper's feature
extractor), with Whisper's window, hop and filterbank: 400-sample Hann window, 160-sample hop, 80 Slaney
mel bands over 0–8 kHz, power spectrum; then a natural log and the fixed affine of LogMelConfig.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from emo.errors import EmoError
from emo.media import num_frames_for

KIND = "log_mel"


@dataclass(frozen=True)
class LogMelConfig:
    """Every setting that changes the features (all of it goes into the fingerprint)."""

    sample_rate: int = 16000  # the rate frame_features expects its waveform at
    n_mels: int = 80  # mel bands: the feature width D
    hop: int = 160  # samples between mel frames (10 ms at 16 kHz)
    window: int = 400  # Hann window and FFT length in samples (25 ms)
    fmin: float = 0.0  # lowest mel band edge, Hz
    fmax: float = 8000.0  # highest mel band edge, Hz (Nyquist at 16 kHz)
    # Mel power below this is clipped before the log, so digital silence maps to a finite value.
    # 1e-10 (Whisper's floor) is below the quantisation noise of 16-bit audio: real recordings never reach it.
    log_floor: float = 1e-10
    # Mel frames stacked per video frame: the "layers" axis L. 4 covers a 25 fps frame exactly and a
    # 30 fps frame (3.3 mel frames) with one shared at the boundary.
    frames_per_video_frame: int = 4
    # Fixed affine (log_mel - mean) / std, the same for every clip, so a clip's features do not depend on
    # the rest of its track (per-clip statistics would). Mean and standard deviation of the log-mel values
    # (natural log of the Slaney-normalised mel power, floor 1e-10) over all 1113 mel frames x 80 bands of
    # the three speech fixtures tests/data/speech_en_24k_3s.wav, hdtf_speech_256_4s.mp4 and
    # small_face_1080x1920_4s.mp4 (-10.88 and 4.98), rounded. Speech then spans about -2..+3, silence -2.4.
    mean: float = -10.9
    std: float = 5.0

    def __post_init__(self):
        problems = []
        for name in ("sample_rate", "n_mels", "hop", "window", "frames_per_video_frame"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                problems.append(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not 0 <= self.fmin < self.fmax <= self.sample_rate / 2:
            problems.append(f"need 0 <= fmin < fmax <= sample_rate/2, got fmin={self.fmin}, fmax={self.fmax}")
        if not self.log_floor > 0:
            problems.append(f"log_floor must be positive, got {self.log_floor}")
        if not self.std > 0:
            problems.append(f"std must be positive, got {self.std}")
        if problems:
            raise EmoError("invalid log-mel settings: " + "; ".join(problems))


# Bump when the computation changes in a way the settings do not show: the fingerprint changes with it.
VERSION = 1
_PIECE_SECONDS = 60.0  # long tracks are computed in pieces of this much audio (bounded memory; exact)


class LogMelFrontEnd:
    """Log-mel features per video frame, (F, L, D) = (frames, ``frames_per_video_frame``, ``n_mels``)."""

    def __init__(self, config: LogMelConfig = LogMelConfig()):
        self.config = config

    @property
    def num_layers(self) -> int:
        """L, as AudioEncoder.num_layers: the AudioProjector's ``num_layers``."""
        return self.config.frames_per_video_frame

    @property
    def hidden_size(self) -> int:
        """D, as AudioEncoder.hidden_size: the AudioProjector's ``feature_dim``."""
        return self.config.n_mels

    # -- settings ----------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        """Everything that defines the features, JSON-ready; :meth:`from_dict` rebuilds the front-end."""
        return {"kind": KIND, "version": VERSION, **dataclasses.asdict(self.config)}

    @classmethod
    def from_dict(cls, settings: dict) -> LogMelFrontEnd:
        settings = dict(settings)
        kind, version = settings.pop("kind", None), settings.pop("version", None)
        if kind != KIND:
            raise EmoError(f"audio front-end settings of kind {kind!r}, expected {KIND!r}")
        if version != VERSION:
            raise EmoError(
                f"log-mel front-end version {version!r} recorded, this code computes version {VERSION}: "
                "recompute the audio features (rerun preprocessing) with this version"
            )
        known = {field.name for field in dataclasses.fields(LogMelConfig)}
        if unknown := sorted(set(settings) - known):
            raise EmoError(f"unknown log-mel settings {unknown}; known: {sorted(known)}")
        return cls(LogMelConfig(**settings))

    def fingerprint(self) -> str:
        """``sha256:<hex>`` of the settings: what preprocessing records and training/generation check."""
        canonical = json.dumps(self.to_dict(), sort_keys=True)
        return f"sha256:{hashlib.sha256(canonical.encode()).hexdigest()}"

    # -- features ----------------------------------------------------------------------------------

    @cached_property
    def _hann(self) -> np.ndarray:
        # transformers is imported where used (here and below), not at the top: a second to import, and
        # `emo preprocess` imports this module (through audio_front_end) also without an audio encoder.
        from transformers.audio_utils import window_function

        return window_function(self.config.window, "hann")  # periodic, as torch.hann_window

    @cached_property
    def _mel_filters(self) -> np.ndarray:
        from transformers.audio_utils import mel_filter_bank

        c = self.config
        return mel_filter_bank(
            num_frequency_bins=c.window // 2 + 1,
            num_mel_filters=c.n_mels,
            min_frequency=c.fmin,
            max_frequency=c.fmax,
            sampling_rate=c.sample_rate,
            norm="slaney",
            mel_scale="slaney",
        )  # (window // 2 + 1, n_mels)

    def log_mel(self, waveform: np.ndarray, first: int, count: int) -> np.ndarray:
        """Normalised log-mel frames ``first .. first + count - 1``: (count, n_mels) float64.

        ``first`` may be negative and the range may run past the end: samples outside the waveform are
        zeros, so each frame depends on its own window only.
        """
        c = self.config
        start = first * c.hop + c.hop // 2 - c.window // 2  # first sample of frame `first`'s window
        stop = start + (count - 1) * c.hop + c.window
        segment = np.zeros(stop - start, dtype=np.float64)
        lo, hi = max(start, 0), min(stop, waveform.size)
        if hi > lo:
            segment[lo - start : hi - start] = waveform[lo:hi]
        from transformers.audio_utils import spectrogram

        mel = spectrogram(
            segment,
            self._hann,
            frame_length=c.window,
            hop_length=c.hop,
            power=2.0,
            center=False,  # we placed the windows ourselves (zeros outside the track, not reflections)
            mel_filters=self._mel_filters,
            mel_floor=c.log_floor,
            log_mel="log",
            dtype=np.float64,
        )  # (n_mels, count)
        return (mel.T - c.mean) / c.std

    def mel_indices(self, fps: float, num_frames: int) -> np.ndarray:
        """Which mel frames video frames 0..num_frames-1 take: (F, L) int64, ascending in both axes."""
        c = self.config
        slots_per_second = c.sample_rate / c.hop
        centres = (np.arange(num_frames, dtype=np.float64) + 0.5) / fps  # (F,) seconds
        offsets = np.arange(c.frames_per_video_frame) - (c.frames_per_video_frame - 1) / 2  # (L,) slots
        # Slot containing each time; the epsilon sends exact slot boundaries (e.g. at 20 fps) up, reproducibly.
        return np.floor(centres[:, None] * slots_per_second + offsets[None, :] + 1e-6).astype(np.int64)

    def frame_features(
        self,
        waveform: np.ndarray,
        fps: float,
        num_frames: int | None = None,
        cache_dir: str | os.PathLike | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Features per video frame: (F, L, D), F = ceil(duration · fps) unless ``num_frames`` is given.

        ``waveform``: mono float samples at ``config.sample_rate``, values in [-1, 1]. Frames past the
        end of the audio see silence. ``cache_dir`` is accepted for the AudioEncoder contract and not
        used: computing these features is faster than hashing the audio for a cache key.
        """
        del cache_dir
        c = self.config
        waveform = np.asarray(waveform, dtype=np.float32).reshape(-1)
        if waveform.size == 0:
            raise EmoError("the audio is empty: give a waveform with at least one sample")
        if not (math.isfinite(fps) and fps > 0):
            raise EmoError(f"fps must be a positive number, got {fps}")
        if num_frames is None:
            num_frames = max(1, num_frames_for(waveform.size / c.sample_rate, fps))
        if num_frames < 1:
            raise EmoError(f"num_frames must be at least 1, got {num_frames}")

        indices = self.mel_indices(fps, num_frames)  # (F, L)
        out = torch.empty(num_frames, c.frames_per_video_frame, c.n_mels, dtype=dtype)  # (F, L, D)
        piece = max(1, int(_PIECE_SECONDS * fps))  # video frames per piece
        for a in range(0, num_frames, piece):
            b = min(num_frames, a + piece)
            first, last = int(indices[a, 0]), int(indices[b - 1, -1])
            mel = self.log_mel(waveform, first, last - first + 1)  # (frames, D)
            out[a:b] = torch.from_numpy(mel[indices[a:b] - first]).to(dtype)  # (b - a, L, D)
        return out


def audio_front_end_from_dict(settings: dict) -> LogMelFrontEnd:
    """The front-end a checkpoint or dataset.json recorded (its :meth:`to_dict`), by ``kind``.

    Only "log_mel" so far; wav2vec2 (a folder of weights, identified by their hash) is to be added here.
    """
    kind = settings.get("kind")
    if kind == KIND:
        return LogMelFrontEnd.from_dict(settings)
    raise EmoError(f"unknown audio front-end kind {kind!r}; known: {KIND!r}")
