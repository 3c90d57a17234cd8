"""SyncNet lip-sync confidence (LSE-C) and distance (LSE-D), the Wav2Lip evaluation protocol.

Chung & Zisserman 2016, "Out of time: automated lip sync in the wild". Network layout of
``syncnet_v2.model`` from joonson/syncnet_python (``netcnnaud.*``, ``netfcaud.*``, ``netcnnlip.*``,
``netfclip.*``); the score follows its ``SyncNetInstance.evaluate`` with ``vshift = 15`` as Wav2Lip's
``calculate_scores_real_videos`` runs it:

1. video at 25 fps, face crops 224×224 (``crop_video`` of ``run_pipeline.py``: detection centres and
   sizes median-filtered over 13 frames, crop scale 0.4, padding value 110), BGR 0..255 floats;
2. audio at 16 kHz, MFCC of python_speech_features' defaults (13 coefficients, 100 Hz; :func:`mfcc`);
3. one video feature per 5-frame window, one audio feature per 20 MFCC frames (0.2 s) starting at 4×
   the frame index; distances between each video feature and the audio features at offsets ±15
   (:func:`calc_pdist`), averaged over time;
4. LSE-D = the minimum of the mean distances, LSE-C = median − minimum.

Our face box is Face Mesh's landmark box (syncnet_python uses an S3FD detector), the one departure.
"""

from __future__ import annotations

import decimal
import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from scipy.fftpack import dct
from scipy.signal import medfilt
from torch import nn

from emo.errors import EmoError
from emo.eval.metrics import Entry, Metric, Video, mean, resample_indices
from emo.eval.weights import load_into, read_state_dict
from emo.media import load_audio

FLAG = "--syncnet"
WEIGHTS_NAME = "syncnet_v2.model"
FPS = 25  # SyncNet was trained on 25 fps video
SAMPLE_RATE = 16000
VSHIFT = 15  # offsets searched, ± frames (Wav2Lip's evaluation setting)
CROP_SCALE = 0.4  # run_pipeline.py --crop_scale
CROP_SIZE = 224


class SyncNet(nn.Module):
    """Audio and lip streams of syncnet_python's ``S`` (``num_layers_in_fc_layers = 1024``)."""

    def __init__(self, embed_dim: int = 1024):
        super().__init__()
        self.netcnnaud = nn.Sequential(
            nn.Conv2d(1, 64, kernel_size=3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.MaxPool2d(kernel_size=1, stride=1),
            nn.Conv2d(64, 192, kernel_size=3, padding=1), nn.BatchNorm2d(192), nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=(1, 2)),
            nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.BatchNorm2d(384), nn.ReLU(),
            nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.BatchNorm2d(256), nn.ReLU(),
            nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.BatchNorm2d(256), nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(256, 512, kernel_size=(5, 4)), nn.BatchNorm2d(512), nn.ReLU(),
        )  # fmt: skip
        self.netfcaud = nn.Sequential(
            nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embed_dim)
        )
        self.netfclip = nn.Sequential(
            nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embed_dim)
        )
        self.netcnnlip = nn.Sequential(
            nn.Conv3d(3, 96, kernel_size=(5, 7, 7), stride=(1, 2, 2)), nn.BatchNorm3d(96), nn.ReLU(),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
            nn.Conv3d(96, 256, kernel_size=(1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)),
            nn.BatchNorm3d(256), nn.ReLU(),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
            nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256), nn.ReLU(),
            nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256), nn.ReLU(),
            nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256), nn.ReLU(),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
            nn.Conv3d(256, 512, kernel_size=(1, 6, 6)), nn.BatchNorm3d(512), nn.ReLU(),
        )  # fmt: skip

    def forward_aud(self, mfcc: torch.Tensor) -> torch.Tensor:
        """(B, 1, 13, 20) MFCC windows -> (B, 1024)."""
        return self.netfcaud(self.netcnnaud(mfcc).flatten(1))

    def forward_lip(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, 3, 5, 224, 224) BGR 0..255 windows -> (B, 1024)."""
        return self.netfclip(self.netcnnlip(frames).flatten(1))


def load_syncnet(path) -> SyncNet:
    """``syncnet_v2.model`` (a plain state dict) -> network in eval mode."""
    model = SyncNet()
    load_into(model, read_state_dict(path, FLAG), path, FLAG)
    return model


# --------------------------------------------------------------------------------------------------
# MFCC, numerically python_speech_features.mfcc(signal, 16000) with its defaults
# --------------------------------------------------------------------------------------------------


def _round_half_up(x: float) -> int:
    return int(decimal.Decimal(x).quantize(decimal.Decimal("1"), rounding=decimal.ROUND_HALF_UP))


def _hz_to_mel(hz):
    return 2595 * np.log10(1 + hz / 700.0)


def _mel_to_hz(mel):
    return 700 * (10 ** (mel / 2595.0) - 1)


def mel_filterbank(nfilt: int = 26, nfft: int = 512, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Triangular filters on FFT bins, (nfilt, nfft // 2 + 1), python_speech_features' construction."""
    mel = np.linspace(_hz_to_mel(0.0), _hz_to_mel(sample_rate / 2), nfilt + 2)
    bins = np.floor((nfft + 1) * _mel_to_hz(mel) / sample_rate)
    bank = np.zeros((nfilt, nfft // 2 + 1))
    for j in range(nfilt):
        for i in range(int(bins[j]), int(bins[j + 1])):
            bank[j, i] = (i - bins[j]) / (bins[j + 1] - bins[j])
        for i in range(int(bins[j + 1]), int(bins[j + 2])):
            bank[j, i] = (bins[j + 2] - i) / (bins[j + 2] - bins[j + 1])
    return bank


def mfcc(
    signal: np.ndarray,
    sample_rate: int = SAMPLE_RATE,
    numcep: int = 13,
    nfilt: int = 26,
    nfft: int = 512,
    preemph: float = 0.97,
    ceplifter: int = 22,
) -> np.ndarray:
    """(N,) samples -> (frames, 13) MFCC: 25 ms rectangular windows every 10 ms, log-energy as c0."""
    signal = np.asarray(signal, dtype=np.float64)
    signal = np.append(signal[0], signal[1:] - preemph * signal[:-1])
    frame_len, frame_step = _round_half_up(0.025 * sample_rate), _round_half_up(0.01 * sample_rate)
    if len(signal) <= frame_len:
        num_frames = 1
    else:
        num_frames = 1 + int(math.ceil((len(signal) - frame_len) / frame_step))
    padded = np.concatenate([signal, np.zeros(int((num_frames - 1) * frame_step + frame_len) - len(signal))])
    index = np.arange(frame_len)[None, :] + frame_step * np.arange(num_frames)[:, None]
    frames = padded[index]  # (T, frame_len)
    power = np.square(np.abs(np.fft.rfft(frames, nfft))) / nfft  # (T, nfft // 2 + 1)
    energy = power.sum(axis=1)
    energy = np.where(energy == 0, np.finfo(float).eps, energy)
    feat = power @ mel_filterbank(nfilt, nfft, sample_rate).T
    feat = np.where(feat == 0, np.finfo(float).eps, feat)
    feat = dct(np.log(feat), type=2, axis=1, norm="ortho")[:, :numcep]
    lift = 1 + (ceplifter / 2.0) * np.sin(np.pi * np.arange(numcep) / ceplifter)
    feat = feat * lift
    feat[:, 0] = np.log(energy)
    return feat


# --------------------------------------------------------------------------------------------------
# Face crops and scores
# --------------------------------------------------------------------------------------------------


def crop_faces(frames: list[np.ndarray], boxes: list[tuple[float, float, float, float]]) -> np.ndarray:
    """syncnet_python's ``crop_video``: RGB frames + per-frame face boxes -> (T, 224, 224, 3) BGR uint8."""
    boxes = np.asarray(boxes, dtype=np.float64)  # (T, 4) x0, y0, x1, y1
    size = np.maximum(boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]) / 2
    cy, cx = (boxes[:, 1] + boxes[:, 3]) / 2, (boxes[:, 0] + boxes[:, 2]) / 2
    size, cx, cy = (medfilt(v, kernel_size=13) for v in (size, cx, cy))
    crops = []
    for frame, bs, mx, my in zip(frames, size, cx, cy, strict=True):
        pad = int(bs * (1 + 2 * CROP_SCALE))
        padded = np.pad(frame[..., ::-1], ((pad, pad), (pad, pad), (0, 0)), constant_values=110)
        my, mx = my + pad, mx + pad
        face = padded[int(my - bs) : int(my + bs * (1 + 2 * CROP_SCALE)),
                      int(mx - bs * (1 + CROP_SCALE)) : int(mx + bs * (1 + CROP_SCALE))]  # fmt: skip
        crops.append(cv2.resize(face, (CROP_SIZE, CROP_SIZE)))
    return np.stack(crops)


def calc_pdist(feat1: torch.Tensor, feat2: torch.Tensor, vshift: int = VSHIFT) -> torch.Tensor:
    """Distances of each video feature to the audio features at offsets -vshift..vshift: (T, 2·vshift+1).

    syncnet_python's ``calc_pdist`` (zero-padded audio features at both ends), stacked.
    """
    win = 2 * vshift + 1
    padded = torch.nn.functional.pad(feat2, (0, 0, vshift, vshift))
    return torch.stack([
        torch.nn.functional.pairwise_distance(feat1[[i], :].repeat(win, 1), padded[i : i + win, :])
        for i in range(len(feat1))
    ])  # fmt: skip


@dataclass(frozen=True)
class SyncScore:
    confidence: float  # LSE-C: median - min of the offset-averaged distances (higher = better sync)
    distance: float  # LSE-D: min of the offset-averaged distances (lower = better)
    offset: int  # audio-video offset in frames at the minimum (vshift - argmin, syncnet_python's sign)


def sync_score(video_feat: torch.Tensor, audio_feat: torch.Tensor, vshift: int = VSHIFT) -> SyncScore:
    """LSE-C / LSE-D from per-window features, like ``SyncNetInstance.evaluate``."""
    mdist = calc_pdist(video_feat, audio_feat, vshift).mean(dim=0)  # (2·vshift+1,)
    minval, minidx = torch.min(mdist, 0)
    return SyncScore(float(torch.median(mdist) - minval), float(minval), int(vshift - minidx))


@torch.no_grad()
def evaluate_sync(
    model: SyncNet, crops_bgr: np.ndarray, audio: np.ndarray, batch_size: int = 20
) -> SyncScore:
    """(T, 224, 224, 3) BGR uint8 crops at 25 fps + 16 kHz mono float audio in [-1, 1] -> score."""
    # syncnet_python reads the wav as int16 samples; MFCC log-energies depend on that scale.
    cc = mfcc(np.asarray(audio, dtype=np.float64) * 32768.0).T  # (13, T_audio)
    cct = torch.from_numpy(cc).float()[None, None]  # (1, 1, 13, T_audio)
    min_length = min(len(crops_bgr), len(audio) // 640)
    lastframe = min_length - 5
    if lastframe <= 0:
        raise ValueError(f"SyncNet needs more than 5 frames of video with audio, got {min_length}")
    video = torch.from_numpy(np.ascontiguousarray(crops_bgr)).float().permute(3, 0, 1, 2)  # (3, T, 224, 224)
    im_feat, cc_feat = [], []
    for i in range(0, lastframe, batch_size):
        idx = range(i, min(lastframe, i + batch_size))
        im_feat.append(model.forward_lip(torch.stack([video[:, v : v + 5] for v in idx])))
        cc_feat.append(model.forward_aud(torch.cat([cct[:, :, :, v * 4 : v * 4 + 20] for v in idx])))
    return sync_score(torch.cat(im_feat), torch.cat(cc_feat))


class SyncNetLSE(Metric):
    """LSE-C / LSE-D: SyncNet on 25 fps face crops of the generated video against its own audio track."""

    entries = (Entry("lse_c", "Sync LSE-C", "higher"), Entry("lse_d", "Sync LSE-D", "lower"))
    flag, weights_name = FLAG, WEIGHTS_NAME

    def __init__(self, config, timed):
        super().__init__(config, timed)
        self.scores: list[SyncScore] = []  # per video

    def load_network(self, path):
        return load_syncnet(path)

    def update(self, video: Video, row: dict) -> None:
        score = self.timed("syncnet", self._score, video)
        if score is not None:
            self.scores.append(score)
            row.update(lse_c=score.confidence, lse_d=score.distance, av_offset=score.offset)

    def _score(self, video: Video) -> SyncScore | None:
        stem = video.pair.stem
        try:
            audio = load_audio(video.pair.generated, sample_rate=SAMPLE_RATE)
        except EmoError as exc:
            self.notes.append(f"{stem}: {exc}")
            return None
        boxes = _fill_boxes(video.obs_gen)
        if boxes is None:
            self.notes.append(f"{stem}: no face found")
            return None
        index = resample_indices(len(video.gen), video.gen_fps, FPS)  # SyncNet expects 25 fps
        crops = crop_faces([video.gen[i] for i in index], [boxes[i] for i in index])
        try:
            return evaluate_sync(self.net, crops, audio)
        except ValueError as exc:
            self.notes.append(f"{stem}: {exc}")
            return None

    def compute(self) -> list[tuple[float | None, str]]:
        note = f"{len(self.scores)} videos, offsets ±{VSHIFT}"
        return [
            (mean([s.confidence for s in self.scores]), note),
            (mean([s.distance for s in self.scores]), note),
        ]


def _fill_boxes(observations) -> list[tuple[float, float, float, float]] | None:
    """Per-frame face boxes with missing frames taking the nearest detected box; None if never found."""
    found = [i for i, o in enumerate(observations) if o is not None]
    if not found:
        return None
    out = []
    for i in range(len(observations)):
        o = observations[min(found, key=lambda j: abs(j - i))]
        out.append((o.box.x0, o.box.y0, o.box.x1, o.box.y1))
    return out
