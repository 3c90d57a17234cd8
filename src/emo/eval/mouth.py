"""A weight-free lip-sync proxy: how well mouth opening follows the loudness of the speech band.

Not SyncNet, and not comparable with LSE-C/LSE-D: reported under its own name (``mouth_audio_corr``).
Per video, the inner-lip opening from Face Mesh (divided by the inter-ocular distance, so head size
does not matter) and the log RMS loudness of the 300-3000 Hz band of the audio (where speech's vowel and
consonant energy is; low hum and high hiss left out) over each frame's time span, both smoothed over 5 frames,
are compared by Pearson correlation; the value is the best over lags of ±3 frames (EMO.md §8).
Always read it beside its control, ``mouth_audio_corr_other_audio``: the same videos against *other*
videos' audio. Measured on six real speech clips: own audio 0.27, other clips' audio 0.11 (a full-band
loudness with lags ±2 and smoothing 3 separated them less: 0.18 against 0.11). A coarse check, much weaker
than SyncNet.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import butter, sosfiltfilt

from emo.errors import EmoError
from emo.eval.metrics import Entry, Metric, Video, mean
from emo.media import load_audio

UPPER_LIP, LOWER_LIP = 13, 14  # Face Mesh inner-lip midpoints
EYES = (468, 473)  # iris centres


def lip_gap(landmarks) -> np.ndarray:
    """(..., 478, >=2) Face Mesh landmarks -> (...) inner-lip gap / inter-ocular distance."""
    lm = np.asarray(landmarks, dtype=np.float64)
    gap = np.linalg.norm(lm[..., UPPER_LIP, :2] - lm[..., LOWER_LIP, :2], axis=-1)
    return gap / (np.linalg.norm(lm[..., EYES[0], :2] - lm[..., EYES[1], :2], axis=-1) + 1e-9)


def mouth_opening(observations) -> np.ndarray:
    """Per-frame inner-lip gap / inter-ocular distance (`lip_gap`); NaN where no face was found."""
    out = np.full(len(observations), np.nan)
    for i, o in enumerate(observations):
        if o is not None:
            out[i] = lip_gap(o.landmarks)
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


SPEECH_BAND = (300.0, 3000.0)  # Hz
SMOOTHING = 5  # frames
MAX_LAG = 3  # frames


def band_loudness(
    audio: np.ndarray, sample_rate: int, fps: float, num_frames: int, band: tuple[float, float] = SPEECH_BAND
) -> np.ndarray:
    """RMS of the ``band`` (Hz) of the audio inside each video frame's time span, (num_frames,): a 4th-order
    Butterworth band-pass (scipy), run forwards and backwards so it does not shift the loudness in time."""
    audio = np.asarray(audio, dtype=np.float64)
    if len(audio) > 27:  # sosfiltfilt's padding needs a few samples more than the filter's length
        sos = butter(4, band, btype="bandpass", fs=sample_rate, output="sos")
        audio = sosfiltfilt(sos, audio)
    return audio_loudness(audio, sample_rate, fps, num_frames)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r over the frames where both are finite; NaN with fewer than 3 or a constant series."""
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if len(a) < 3 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def _smooth(x: np.ndarray, k: int = SMOOTHING) -> np.ndarray:
    return np.convolve(x, np.ones(k) / k, mode="same")


def mouth_audio_correlation(
    mouth: np.ndarray, loudness: np.ndarray, max_lag: int = MAX_LAG
) -> tuple[float, int]:
    """(best Pearson r over lags ±max_lag, its lag in frames; + = the mouth moves after the sound).

    Both series are smoothed over SMOOTHING frames; loudness is taken in log (perceived loudness, and one
    loud syllable should not dominate). Frames without a face are left out.
    """
    n = min(len(mouth), len(loudness))
    filled = np.where(
        np.isfinite(mouth[:n]), mouth[:n], np.nanmean(mouth[:n]) if np.isfinite(mouth[:n]).any() else 0
    )
    m, a = _smooth(filled), _smooth(np.log(loudness[:n] + 1e-4))
    m[~np.isfinite(mouth[:n])] = np.nan
    best, best_lag = float("nan"), 0
    for lag in range(-max_lag, max_lag + 1):
        r = pearson(m[lag:], a[: n - lag]) if lag >= 0 else pearson(m[: n + lag], a[-lag:])
        if np.isfinite(r) and not r <= best:
            best, best_lag = r, lag
    return best, best_lag


class MouthAudio(Metric):
    """The weight-free lip-sync proxy: :func:`mouth_audio_correlation` of each generated video with its own
    audio, and the control: each video against the next video's audio (in evaluation order, cut to the
    shorter of the two), which a model that ignores the audio scores as well as its own."""

    entries = (
        Entry("mouth_audio_corr", "Mouth-audio correlation (proxy)", "higher"),
        Entry("mouth_audio_corr_other_audio", "  control: against other videos' audio", ""),
    )

    def __init__(self, config, timed):
        super().__init__(config, timed)
        self.values: list[float] = []  # per video
        self.series: list[
            tuple[np.ndarray, np.ndarray]
        ] = []  # per video: mouth opening, speech-band loudness

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
        loudness = band_loudness(audio, 16000, video.gen_fps, len(opening))
        r, lag = mouth_audio_correlation(opening, loudness)
        if not np.isfinite(r):
            self.notes.append(f"{video.pair.stem}: mouth or audio constant")
            return None
        self.series.append((opening, loudness))
        return r, lag

    def compute(self) -> list[tuple[float | None, str]]:
        control = []
        if len(self.series) >= 2:
            for i, (opening, _) in enumerate(self.series):
                other = self.series[(i + 1) % len(self.series)][1]
                n = min(len(opening), len(other))
                r, _ = mouth_audio_correlation(opening[:n], other[:n])
                if np.isfinite(r):
                    control.append(r)
        return [
            (mean(self.values), "Pearson r, mouth opening vs 300-3000 Hz loudness, best lag of ±3 frames"),
            (mean(control), "the same videos with the next video's audio" if control else "needs 2+ videos"),
        ]
