"""Tiny-autoencoder codec: the shipped TAEF2 weights on real faces, parity with diffusers' AutoencoderTiny on
the TAESD layout, loading from .pth / .safetensors / folders, and one-line errors for bad files."""

from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from diffusers import AutoencoderTiny

from emo.codec import LatentCodec
from emo.codec.tiny_autoencoder import (
    TinyAutoencoderCodec,
    load_codec_folder,
    load_taef2,
    load_tiny_autoencoder,
    shipped_taef2_dir,
)
from emo.errors import EmoError
from emo.media import iter_video_frames

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def taef2() -> TinyAutoencoderCodec:
    return load_taef2()


@pytest.fixture(scope="module")
def face_frames() -> torch.Tensor:
    """4 frames spread over the 4 s HDTF clip, area-downscaled 256 -> 128, as (4, 3, 128, 128) in [-1, 1]."""
    frames = list(islice(iter_video_frames(DATA / "hdtf_speech_256_4s.mp4"), 0, 96, 24))
    pixels = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1
    return F.interpolate(pixels, size=(128, 128), mode="area")


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-frame PSNR of two [-1, 1] batches after rounding to 8 bits (what a video frame holds)."""
    a8, b8 = (((x.clamp(-1, 1) + 1) * 127.5).round() for x in (a, b))
    return 10 * torch.log10(255**2 / ((a8 - b8) ** 2).mean(dim=(1, 2, 3)))


def test_shipped_taef2_rebuilds_faces(taef2, face_frames):
    assert isinstance(taef2, LatentCodec)
    assert taef2.describe() == {
        "kind": "tiny_autoencoder",
        "layout": "taef2",
        "latent_channels": 32,
        "downscale": 8,
        "width": 64,
        "decoder_width": 64,
        "scaling": 1.0,
        "shift": 0.0,
    }
    with torch.no_grad():
        latents = taef2.encode(face_frames)
        rebuilt = taef2.decode(latents)
    assert latents.shape == (4, 32, 16, 16)
    assert latents.abs().max() < 8 and 0.7 < latents.std() < 1.3  # raw latents need no scaling (SOURCES.md)
    assert rebuilt.shape == face_frames.shape
    assert psnr(rebuilt, face_frames).mean() >= 28


def test_taef2_is_frozen_but_passes_gradients(taef2):
    latents = torch.zeros(1, 32, 2, 2, requires_grad=True)
    taef2.decode(latents).sum().backward()
    assert latents.grad is not None and not any(p.requires_grad for p in taef2.parameters())


def _taesd_state_dicts(diffusers_vae: AutoencoderTiny) -> tuple[dict, dict]:
    """diffusers' AutoencoderTiny keys -> the published taesd_encoder.pth / taesd_decoder.pth keys
    (diffusers nests layers under `layers.`, and its decoder has no module for the soft clamp at index 0)."""
    encoder, decoder = {}, {}
    for key, value in diffusers_vae.state_dict().items():
        part, _, index, rest = key.split(".", 3)
        if part == "encoder":
            encoder[f"{index}.{rest}"] = value.clone()
        else:
            decoder[f"{int(index) + 1}.{rest}"] = value.clone()
    return encoder, decoder


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_taesd_layout_loads_and_matches_diffusers(tmp_path, suffix):
    torch.manual_seed(0)
    reference = AutoencoderTiny(
        encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8), latent_channels=4
    ).eval()
    encoder_state, decoder_state = _taesd_state_dicts(reference)
    encoder_path, decoder_path = tmp_path / f"taesd_encoder{suffix}", tmp_path / f"taesd_decoder{suffix}"
    save = safetensors.torch.save_file if suffix == ".safetensors" else torch.save
    save(encoder_state, encoder_path)
    save(decoder_state, decoder_path)

    codec = load_tiny_autoencoder(encoder_path, decoder_path)
    assert (codec.describe()["layout"], codec.latent_channels, codec.describe()["width"]) == ("taesd", 4, 8)
    pixels = torch.rand(2, 3, 32, 48) * 2 - 1
    with torch.no_grad():
        latents = codec.encode(pixels)
        rebuilt = codec.decode(latents)
        torch.testing.assert_close(latents, reference.encode(pixels).latents)
        torch.testing.assert_close(rebuilt, reference.decode(latents).sample)
    assert latents.shape == (2, 4, 4, 6) and rebuilt.shape == pixels.shape

    # The same files found by name in a folder without codec.json.
    assert torch.equal(load_codec_folder(tmp_path).encode(pixels), latents)


def test_save_then_load_folder_is_exact(taef2, tmp_path):
    taef2.save(tmp_path / "codec")
    loaded = load_codec_folder(tmp_path / "codec")
    assert loaded.describe() == taef2.describe()
    expected = taef2.state_dict()
    assert loaded.state_dict().keys() == expected.keys()
    assert all(torch.equal(value, expected[key]) for key, value in loaded.state_dict().items())


def test_scaling_and_shift_travel_with_the_folder(taef2, tmp_path):
    scaled = TinyAutoencoderCodec(taef2.encoder, taef2.decoder, scaling=0.5, shift=0.25)
    scaled.save(tmp_path)
    loaded = load_codec_folder(tmp_path)
    assert (loaded.scaling, loaded.shift) == (0.5, 0.25)
    pixels = torch.zeros(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(pixels), (taef2.encode(pixels) - 0.25) * 0.5)
        latents = torch.randn(1, 32, 2, 2)
        torch.testing.assert_close(loaded.decode(latents), taef2.decode(latents / 0.5 + 0.25))


SHIPPED_ENCODER = shipped_taef2_dir() / "encoder.safetensors"
SHIPPED_DECODER = shipped_taef2_dir() / "decoder.safetensors"


def test_swapped_files_are_named(tmp_path):
    with pytest.raises(EmoError, match="swapped") as error:
        load_tiny_autoencoder(SHIPPED_DECODER, SHIPPED_ENCODER)
    assert str(SHIPPED_DECODER) in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_file_is_named(tmp_path, suffix):
    whole = tmp_path / f"whole{suffix}"
    state = safetensors.torch.load_file(SHIPPED_ENCODER)
    safetensors.torch.save_file(state, whole) if suffix == ".safetensors" else torch.save(state, whole)
    truncated = tmp_path / f"taef2_encoder{suffix}"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(EmoError, match="truncated") as error:
        load_tiny_autoencoder(truncated, SHIPPED_DECODER)
    assert str(truncated) in str(error.value) and "\n" not in str(error.value)


def test_wrong_file_is_named(tmp_path):
    other = tmp_path / "unet.pth"
    torch.save({"conv_in.weight": torch.zeros(4, 4, 3, 3)}, other)
    with pytest.raises(EmoError, match="not a TAESD/TAEF2 encoder") as error:
        load_tiny_autoencoder(other, SHIPPED_DECODER)
    assert str(other) in str(error.value)

    with pytest.raises(EmoError, match="encoder where the decoder belongs") as error:  # two encoders
        load_tiny_autoencoder(SHIPPED_ENCODER, SHIPPED_ENCODER)
    assert str(SHIPPED_ENCODER) in str(error.value)

    with pytest.raises(EmoError, match="not found") as error:
        load_tiny_autoencoder(tmp_path / "missing.pth", SHIPPED_DECODER)
    assert "missing.pth" in str(error.value)
