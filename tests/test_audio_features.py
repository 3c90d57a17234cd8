"""Audio features: wav2vec2 hidden states (tiny random model, real on-disk layout), chunking, frame rate, cache."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import Wav2Vec2Config, Wav2Vec2Model

from emo.conditioning.audio_features import AudioEncoder, ChunkConfig
from emo.conditioning.windows import window
from emo.errors import EmoError
from emo.media import load_audio
from emo.tiny import tiny_audio_model

DATA = Path(__file__).parent / "data"


def tiny_wav2vec2(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    config = Wav2Vec2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
    )
    Wav2Vec2Model(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_wav2vec2(tmp_path_factory.mktemp("w2v") / "tiny", seed=0)


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return load_audio(DATA / "speech_en_24k_3s.wav")  # 3 s at 16 kHz


def test_loads_from_local_folder_and_matches_transformers(model_dir, speech):
    encoder = AudioEncoder.from_pretrained(model_dir, chunk=ChunkConfig(chunk_seconds=100))
    assert (encoder.num_layers, encoder.hidden_size) == (3, 32)
    features = encoder.encode(speech)  # (T50, L, D)
    # Reference: the plain transformers forward on the normalised waveform (do_normalize=True).
    model = Wav2Vec2Model.from_pretrained(model_dir).eval()
    x = torch.from_numpy(speech.astype(np.float64))
    x = ((x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-7)).float()
    with torch.no_grad():
        reference = torch.stack(model(x[None], output_hidden_states=True).hidden_states, dim=2)[0]
    assert features.shape == reference.shape == (149, 3, 32)
    torch.testing.assert_close(features, reference, atol=1e-4, rtol=1e-4)


def test_chunked_matches_unchunked(model_dir, speech):
    whole = AudioEncoder.from_pretrained(model_dir, chunk=ChunkConfig(chunk_seconds=100)).encode(speech)
    chunked_encoder = AudioEncoder.from_pretrained(
        model_dir, chunk=ChunkConfig(chunk_seconds=0.8, context_seconds=0.5)
    )
    pieces = list(chunked_encoder.iter_encode(speech))
    assert len(pieces) == 4 and [first for first, _ in pieces] == [0, 40, 80, 120]
    chunked = torch.cat([features for _, features in pieces])
    assert chunked.shape == whole.shape
    relative = (chunked - whole).norm(dim=-1) / whole.norm(dim=-1)  # (T50, L)
    assert relative.mean() < 0.01 and relative.max() < 0.05
    # The CNN features (layer 0 input) do not depend on chunking at all.
    torch.testing.assert_close(chunked[:, 0], whole[:, 0], atol=1e-4, rtol=1e-4)


def test_loudness_does_not_change_features(model_dir, speech):
    encoder = AudioEncoder.from_pretrained(model_dir)
    torch.testing.assert_close(encoder.encode(speech * 0.3), encoder.encode(speech), atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("seconds, fps", [(3.0, 25), (1.01, 30), (0.5, 30000 / 1001), (0.004, 25)])
def test_frame_count_is_ceil_duration_times_fps(model_dir, seconds, fps):
    encoder = AudioEncoder.from_pretrained(model_dir)
    waveform = np.random.default_rng(0).normal(0, 0.1, round(seconds * 16000)).astype(np.float32)
    features = encoder.frame_features(waveform, fps)
    assert features.shape == (math.ceil(seconds * fps - 1e-6), 3, 32)
    assert torch.isfinite(features).all()


def test_frame_features_interpolate_the_50hz_features(model_dir, speech):
    encoder = AudioEncoder.from_pretrained(
        model_dir, chunk=ChunkConfig(chunk_seconds=1.0, context_seconds=0.5)
    )
    at50 = encoder.encode(speech)  # (149, L, D)
    at25 = encoder.frame_features(speech, 25)  # (75, L, D)
    # Video frame f is centred at (f + 0.5)/25 s = 50 Hz position 2f + 0.375 (frames centred at 320j + 200).
    for f in (0, 10, 19, 20, 37, 60, 73):
        expected = 0.625 * at50[2 * f] + 0.375 * at50[2 * f + 1]
        torch.testing.assert_close(at25[f], expected, atol=1e-5, rtol=1e-5)
    # Frames past the audio (num_frames larger than the duration) hold the last features.
    longer = encoder.frame_features(speech, 25, num_frames=80)
    torch.testing.assert_close(longer[:74], at25[:74])
    torch.testing.assert_close(longer[79], at50[-1])


def test_silence_gives_finite_features(model_dir):
    encoder = AudioEncoder.from_pretrained(model_dir)
    features = encoder.frame_features(np.zeros(16000, np.float32), 30)
    assert features.shape == (30, 3, 32) and torch.isfinite(features).all()


def test_cache_hit_is_identical_and_keyed_by_encoder(model_dir, speech, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    encoder = AudioEncoder.from_pretrained(model_dir)
    first = encoder.frame_features(speech, 25, cache_dir=cache)
    assert len(list(cache.glob("*.safetensors"))) == 1

    # Same weights loaded again: same identity, and the cache answers without running the model.
    again = AudioEncoder.from_pretrained(model_dir)
    assert again.identity == encoder.identity

    def not_called(*args, **kwargs):
        raise AssertionError("the model ran despite a cache hit")

    monkeypatch.setattr(again, "iter_encode", not_called)
    torch.testing.assert_close(again.frame_features(speech, 25, cache_dir=cache), first, atol=0, rtol=0)

    # Other weights: another identity, a cache miss, other features.
    other = AudioEncoder.from_pretrained(tiny_wav2vec2(tmp_path / "other", seed=1))
    assert other.identity != encoder.identity
    different = other.frame_features(speech, 25, cache_dir=cache)
    assert len(list(cache.glob("*.safetensors"))) == 2
    assert not torch.allclose(different, first)
    # Other fps or other audio: other entries.
    encoder.frame_features(speech, 30, cache_dir=cache)
    encoder.frame_features(speech[:16000], 25, cache_dir=cache)
    assert len(list(cache.glob("*.safetensors"))) == 4
    assert not list(cache.glob(".*tmp*"))  # atomic writes left no temp files


def test_missing_or_invalid_model_folder(tmp_path):
    with pytest.raises(EmoError, match="no wav2vec2 model at") as info:
        AudioEncoder.from_pretrained(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(info.value)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "wav2vec2"}))  # no weights
    with pytest.raises(EmoError, match="broken"):
        AudioEncoder.from_pretrained(broken)
    truncated = tmp_path / "truncated"
    tiny_audio_model().save_pretrained(truncated, safe_serialization=True)
    (truncated / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(EmoError, match="cannot load the wav2vec2 model at .*truncated"):
        AudioEncoder.from_pretrained(truncated)


def test_window_gives_each_frame_its_neighbours():
    x = torch.arange(5).float()[:, None].repeat(1, 3)  # (F=5, 3), frame f filled with f
    out = window(x, m=2)  # (5, 5, 3)
    assert out.shape == (5, 5, 3)
    assert out[:, :, 0].tolist() == [
        [0, 0, 0, 1, 2],
        [0, 0, 1, 2, 3],
        [0, 1, 2, 3, 4],
        [1, 2, 3, 4, 4],
        [2, 3, 4, 4, 4],
    ]
    torch.testing.assert_close(out[:, 2], x)  # the centre slot is the frame itself
    assert window(torch.zeros(1, 7, 4), m=2).shape == (1, 5, 7, 4)
    torch.testing.assert_close(window(x, m=0)[:, 0], x)
