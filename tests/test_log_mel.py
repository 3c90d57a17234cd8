"""The weight-free log-mel front-end: shapes, locality, meaning, settings round-trip, errors."""

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from emo.conditioning import log_mel
from emo.conditioning.log_mel import LogMelConfig, LogMelFrontEnd, audio_front_end_from_dict
from emo.errors import EmoError
from emo.media import load_audio

SPEECH = Path(__file__).parent / "data" / "speech_en_24k_3s.wav"
SR = 16000


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return load_audio(SPEECH, SR)  # 3 s


@pytest.fixture(scope="module")
def front_end() -> LogMelFrontEnd:
    return LogMelFrontEnd()


@pytest.mark.parametrize("fps, frames", [(25, 75), (30, 90)])
def test_shape_per_video_frame(front_end, speech, fps, frames):
    features = front_end.frame_features(speech, fps)
    assert features.shape == (frames, 4, 80) == (frames, front_end.num_layers, front_end.hidden_size)
    assert features.dtype == torch.float32 and torch.isfinite(features).all()
    # Fixed normalisation measured on speech: speech lands at O(1), not at raw log values near -11.
    assert -1.5 < features.mean() < 1.5 and 0.5 < features.std() < 2.0
    assert front_end.frame_features(speech, fps, num_frames=10).shape == (10, 4, 80)
    assert front_end.frame_features(speech, fps, dtype=torch.float16).dtype == torch.float16


@pytest.mark.parametrize("fps", [25, 30])
def test_frame_features_do_not_depend_on_track_length(front_end, speech, fps):
    full = front_end.frame_features(speech, fps)
    short = front_end.frame_features(speech[: 2 * SR], fps)  # first 2 s
    # Every frame whose mel windows (±12.5 ms around its slots) end inside the 2 s is the same.
    inside = 2 * fps - 1
    assert (short[:inside] - full[:inside]).abs().max() < 1e-5
    # Past the end of the audio a frame sees silence, whatever track it came from.
    padded = front_end.frame_features(speech[: 2 * SR], fps, num_frames=3 * fps)
    silence = front_end.frame_features(np.zeros(SR, np.float32), fps)[0, 0, 0]
    assert torch.all(padded[2 * fps + 1 :] == silence)


def test_long_tracks_in_pieces_give_the_same_features(front_end, speech, monkeypatch):
    whole = front_end.frame_features(speech, 30)
    monkeypatch.setattr(log_mel, "_PIECE_SECONDS", 0.7)  # 21 video frames a piece, 5 pieces
    assert (front_end.frame_features(speech, 30) - whole).abs().max() < 1e-5


def test_a_tone_burst_shows_where_and_at_what_pitch_it_is(front_end):
    # 2 s of silence with a 1 kHz tone over [1.02 s, 1.20 s): at 25 fps, from the middle of frame 25
    # to the end of frame 29.
    t = np.arange(2 * SR) / SR
    wave = np.where((t >= 1.02) & (t < 1.20), 0.5 * np.sin(2 * np.pi * 1000 * t), 0).astype(np.float32)
    features = front_end.frame_features(wave, 25)  # (50, 4, 80)
    loudest_band = features.amax(dim=(1, 2))  # (F,)
    silence = features[0, 0, 0]
    assert torch.all(loudest_band[25:30] > silence + 2)
    far = [i for i in range(50) if i < 24 or i > 30]
    assert torch.all(features[far] == silence)
    # 100 Hz detail is kept on the L axis: frame 25's first slot [1.00, 1.01) s has a window that ends at
    # 1.0175 s, before the tone, its last two slots are inside the tone.
    assert torch.all(features[25, 0] == silence)
    assert torch.all(features[25, 2:].amax(dim=-1) > features[25, 0].amax() + 2)
    # The loudest band is the one around 1 kHz.
    filters = front_end._mel_filters  # (bins, mels)
    band_at_1khz = int(np.argmax(filters[1000 * front_end.config.window // SR]))
    loudest = features[27].mean(dim=0).argmax().item()
    assert abs(loudest - band_at_1khz) <= 1


def test_silence_is_constant_and_low(front_end, speech):
    features = front_end.frame_features(np.zeros(SR, np.float32), 30)
    config = front_end.config
    floor = (math.log(config.log_floor) - config.mean) / config.std
    assert torch.allclose(features, torch.full_like(features, floor))
    assert floor < front_end.frame_features(speech, 30).quantile(0.05)


def test_settings_round_trip_and_fingerprint(front_end, speech):
    settings = front_end.to_dict()
    assert settings["kind"] == "log_mel" and settings["frames_per_video_frame"] == 4
    rebuilt = LogMelFrontEnd.from_dict(json.loads(json.dumps(settings)))  # as dataset.json stores it
    assert rebuilt.config == front_end.config and rebuilt.fingerprint() == front_end.fingerprint()
    assert front_end.fingerprint().startswith("sha256:")
    assert torch.equal(rebuilt.frame_features(speech, 25), front_end.frame_features(speech, 25))
    assert isinstance(audio_front_end_from_dict(settings), LogMelFrontEnd)

    changed = {
        "sample_rate": 22050,
        "n_mels": 64,
        "hop": 320,
        "window": 512,
        "fmin": 20.0,
        "fmax": 7600.0,
        "log_floor": 1e-8,
        "frames_per_video_frame": 2,
        "mean": -10.0,
        "std": 4.0,
    }
    assert set(changed) == {field.name for field in dataclasses.fields(LogMelConfig)}
    prints = {front_end.fingerprint()}
    for name, value in changed.items():
        other = LogMelFrontEnd(dataclasses.replace(front_end.config, **{name: value}))
        prints.add(other.fingerprint())
    assert len(prints) == 1 + len(changed)


def test_bad_settings_are_refused(front_end):
    settings = front_end.to_dict()
    with pytest.raises(EmoError, match="kind"):
        audio_front_end_from_dict({**settings, "kind": "wav2vec3"})
    with pytest.raises(EmoError, match="unknown log-mel settings"):
        LogMelFrontEnd.from_dict({**settings, "n_fft": 512})
    with pytest.raises(EmoError, match="version"):
        LogMelFrontEnd.from_dict({**settings, "version": 0})
    with pytest.raises(EmoError, match="n_mels"):
        LogMelConfig(n_mels=0)
    with pytest.raises(EmoError, match="fmax"):
        LogMelConfig(fmax=9000.0)


@pytest.mark.parametrize(
    "wave, fps, num_frames, message",
    [
        (np.zeros(0, np.float32), 25, None, "empty"),
        (np.zeros(SR, np.float32), 0, None, "fps"),
        (np.zeros(SR, np.float32), -25, None, "fps"),
        (np.zeros(SR, np.float32), float("nan"), None, "fps"),
        (np.zeros(SR, np.float32), 25, 0, "num_frames"),
    ],
)
def test_bad_inputs_are_refused(front_end, wave, fps, num_frames, message):
    with pytest.raises(EmoError, match=message):
        front_end.frame_features(wave, fps, num_frames)
