"""A weight-free lip-sync proxy: how well mouth opening follows the loudness of the audio.

Not SyncNet, and not comparable with LSE-C/LSE-D: reported under its own name (``mouth_audio_corr``).
Per video, the inner-lip opening from Face Mesh (divided by the inter-ocular distance, so head size
does not matter) and the log RMS loudness of the audio over each frame's time span, both smoothed over
3 frames, are compared by Pearson correlation; the value is the best over lags of ±2 frames. Speech
opens the mouth when it is loud: on our 4 s talking-head fixtures with their own audio r ≈ 0.3–0.4,
with reversed or 1 s-shifted audio ≤ 0.22 (on 1.3 s clips the two can overlap). A coarse sanity
check, much weaker than SyncNet.
"""

from __future__ import annotations

import numpy as np

from emo.errors import EmoError
from emo.eval.metrics import Entry, Metric, Video, mean
from emo.media import load_audio

UPPER_LIP, LOWER_LIP = 13, 14  # Face Mesh inner-lip midpoints
EYES = (468, 473)  # iris centres


def mouth_opening(observations) -> np.ndarray:
    """Per-frame inner-lip gap / inter-ocular distance; NaN where no face was found."""
    out = np.full(len(observations), np.nan)
    for i, o in enumerate(observations):
        if o is not None:
            lm = np.asarray(o.landmarks, dtype=np.float64)
            out[i] = np.linalg.norm(lm[UPPER_LIP, :2] - lm[LOWER_LIP, :2]) / (
                np.linalg.norm(lm[EYES[0], :2] - lm[EYES[1], :2]) + 1e-9
            )
    return out


def audio_loudness(audio: np.ndarray, sample_rate: int, fps: float, num_frames: int) -> np.ndarray:
    """RMS of the samples inside each video frame's time span, (num_frames,)."""
    audio = np.asarray(audio, dtype=np.float64)
    edges = np.round(np.arange(num_frames + 1) * sample_rate / fps).astype(int)
    out = np.zeros(num_frames)
    for i in range(num_frames):
        chunk = audio[edges[i] : edges[i + 1]]
        out[i] = np.sqrt(np.mean(chunk**2)) if len(chunk) else 0.0
    return out


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if len(a) < 3 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def _smooth(x: np.ndarray, k: int = 3) -> np.ndarray:
    return np.convolve(x, np.ones(k) / k, mode="same")


def mouth_audio_correlation(mouth: np.ndarray, loudness: np.ndarray, max_lag: int = 2) -> tuple[float, int]:
    """(best Pearson r over lags ±max_lag, its lag in frames; + = the mouth moves after the sound).

    Both series are smoothed over 3 frames; loudness is taken in log (perceived loudness, and one loud
    syllable should not dominate). Frames without a face are left out.
    """
    n = min(len(mouth), len(loudness))
    filled = np.where(
        np.isfinite(mouth[:n]), mouth[:n], np.nanmean(mouth[:n]) if np.isfinite(mouth[:n]).any() else 0
    )
    m, a = _smooth(filled), _smooth(np.log(loudness[:n] + 1e-4))
    m[~np.isfinite(mouth[:n])] = np.nan
    best, best_lag = float("nan"), 0
    for lag in range(-max_lag, max_lag + 1):
        r = _pearson(m[lag:], a[: n - lag]) if lag >= 0 else _pearson(m[: n + lag], a[-lag:])
        if np.isfinite(r) and not r <= best:
            best, best_lag = r, lag
    return best, best_lag


class MouthAudio(Metric):
    """The weight-free lip-sync proxy: :func:`mouth_audio_correlation` of each generated video."""

    entries = (Entry("mouth_audio_corr", "Mouth-audio correlation (proxy)", "higher"),)

    def __init__(self, config, timed):
        super().__init__(config, timed)
        self.values: list[float] = []  # per video

    def update(self, video: Video, row: dict) -> None:
        corr = self.timed("mouth", self._correlation, video)
        if corr is not None:
            self.values.append(corr[0])
            row["mouth_audio_corr"], row["mouth_audio_lag"] = corr

    def _correlation(self, video: Video) -> tuple[float, int] | None:
        try:
            audio = load_audio(video.pair.generated, sample_rate=16000)
        except EmoError as exc:
            self.notes.append(f"{video.pair.stem}: {exc}")
            return None
        opening = mouth_opening(video.obs_gen)
        r, lag = mouth_audio_correlation(opening, audio_loudness(audio, 16000, video.gen_fps, len(opening)))
        if not np.isfinite(r):
            self.notes.append(f"{video.pair.stem}: mouth or audio constant")
            return None
        return r, lag

    def compute(self) -> list[tuple[float | None, str]]:
        return [(mean(self.values), "Pearson r, mouth opening vs loudness")]
