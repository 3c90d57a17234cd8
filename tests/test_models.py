"""The EMO network (issue 2): SD1.5 parity, weight layouts, conditioning pathways, round-trips."""

from __future__ import annotations

import re

import pytest
import torch

from emo.config import sd15, tiny
from emo.errors import EmoError
from emo.models import EMO, Conditioning
from emo.models.attention import zero_initialised_parameters
from emo.models.loading import load_motion_module, load_sd15, read_state_dict
from emo.models.pathways import PATHWAYS, parameter_pathways
from emo.models.speed_encoder import bucket_centres, speed_buckets
from emo.models.unet import EMOUNet
from models_helpers import animatediff_layout, diffusers_to_ldm_unet, tiny_diffusers_unet, tiny_motion_adapter

CFG = tiny()
B, F, H, W = 1, 6, 8, 12  # non-square latents on purpose
N_MOTION = 2


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd15")
    tiny_diffusers_unet().save_pretrained(root / "unet")
    return root


@pytest.fixture()
def model(sd_folder):
    torch.manual_seed(0)
    m = EMO.from_config(CFG).eval()
    load_sd15(m, sd_folder)
    return m


def perturb(model: EMO, *components: str, scale: float = 0.2, seed: int = 1) -> None:
    """Wake up the zero-initialised layers of the named components (default: all of them)."""
    groups = model.parameter_groups()
    chosen = {id(p) for name in components or groups for p in groups[name]}
    asleep = set(zero_initialised_parameters(model))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        hits = 0
        for name, p in model.named_parameters():
            if name in asleep and id(p) in chosen:
                p.add_(torch.randn(p.shape, generator=gen) * scale)
                hits += 1
    assert hits, f"no zero-initialised parameter in {components}"


def inputs(seed=0, frames=F):
    g = torch.Generator().manual_seed(seed)
    return dict(
        noisy=torch.randn(B, frames, 4, H, W, generator=g),
        reference=torch.randn(B, 4, H, W, generator=g),
        motion=torch.randn(B, N_MOTION, 4, H, W, generator=g),
        audio=torch.randn(
            B, frames, 2 * CFG.audio_window + 1, CFG.audio_layers, CFG.audio_feature_dim, generator=g
        ),
        speed=torch.rand(B, frames, 2 * CFG.audio_window + 1, generator=g) * 2,
        mask=(torch.rand(B, 1, H * 8, W * 8, generator=g) > 0.5).float(),
    )


def run(model, x, *, audio=True, speed=True, mask=True, reference=True, motion=True):
    ref = model.reference_features(x["reference"], x["motion"] if motion else None) if reference else None
    cond = Conditioning(
        audio=x["audio"] if audio else None,
        speed=x["speed"] if speed else None,
        face_mask=x["mask"] if mask else None,
    )
    with torch.no_grad():
        return model(x["noisy"], torch.tensor([321]), cond, ref)


# -- 1. parity with SD1.5 ---------------------------------------------------------------------------------
def test_backbone_reproduces_sd_unet_without_text_cross_attention(model, sd_folder):
    reference_unet = tiny_diffusers_unet()
    for name, module in reference_unet.named_modules():
        if name.endswith("attn2"):
            torch.nn.init.zeros_(module.to_out[0].weight)
            torch.nn.init.zeros_(module.to_out[0].bias)
    x = torch.randn(B * F, 4, H, W)
    t = torch.tensor([321] * (B * F))
    with torch.no_grad():
        expected = reference_unet(x, t, encoder_hidden_states=torch.randn(B * F, 3, 24)).sample
        got = model.backbone(x, torch.tensor([321]), num_frames=F)
    assert (got - expected).abs().max().item() <= 1e-5


def test_sd_load_report_names_new_and_ignored_keys(sd_folder):
    model = EMO.from_config(CFG)
    backbone, reference = load_sd15(model, sd_folder)
    assert backbone.unexpected == [] and reference.unexpected == []
    assert backbone.ignored and all(".attn2." in k or ".norm2." in k for k in backbone.ignored)
    assert all(re.search(r"motion_modules|audio_attn|norm_audio", k) for k in backbone.missing)
    assert reference.missing == []  # the ReferenceNet is SD1.5 exactly, minus its output head
    assert any(k.startswith("conv_out") for k in reference.ignored)


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_single_file_ldm_checkpoint_loads_like_the_folder(sd_folder, tmp_path, suffix):
    state = tiny_diffusers_unet().state_dict()
    ldm = diffusers_to_ldm_unet(state, CFG.layers_per_block)
    ldm["first_stage_model.decoder.conv_in.weight"] = torch.zeros(1)  # other parts of a full SD file
    path = tmp_path / f"sd15{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(ldm, str(path))
    else:
        torch.save({"state_dict": ldm}, path)
    torch.manual_seed(0)
    from_file = EMO.from_config(CFG)
    torch.manual_seed(0)
    from_folder = EMO.from_config(CFG)
    report, _ = load_sd15(from_file, path)
    assert report.unexpected == [] and report.loaded > 0
    load_sd15(from_folder, sd_folder)
    a, b = from_file.backbone.state_dict(), from_folder.backbone.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("variant", [None, "fp16"])
def test_half_precision_unet_folder_loads(sd_folder, tmp_path, variant):
    """Some SD1.5 downloads hold only `diffusion_pytorch_model.fp16.safetensors`."""
    unet = tiny_diffusers_unet()
    unet.to(torch.float16).save_pretrained(tmp_path / "sd/unet", variant=variant)
    model = EMO.from_config(CFG)
    report, _ = load_sd15(model, tmp_path / "sd")
    assert report.unexpected == [] and report.loaded > 0
    own = model.backbone.state_dict()
    assert own["conv_in.weight"].dtype == torch.float32
    assert torch.equal(own["conv_in.weight"], unet.state_dict()["conv_in.weight"].float())


@pytest.mark.parametrize("layout", ["root", "vae", "fp16"])
def test_vae_loads_from_a_diffusers_folder(tmp_path, layout):
    from emo.models.loading import load_vae
    from emo.tiny import tiny_vae

    vae = tiny_vae(seed=5)
    folder = tmp_path / "sd15" / ("vae" if layout != "root" else "")
    if layout == "fp16":
        vae.to(torch.float16).save_pretrained(folder, variant="fp16")
    else:
        vae.save_pretrained(folder)
    loaded = load_vae(tmp_path / "sd15")
    a, b = vae.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k].float(), b[k].float()) for k in a)
    assert loaded.config.scaling_factor == 0.18215
    with pytest.raises(EmoError, match="no VAE"):
        load_vae(tmp_path / "nothing")


def test_mismatched_checkpoint_names_the_key(tmp_path):
    from safetensors.torch import save_file

    state = tiny_diffusers_unet().state_dict()
    state["conv_in.weight"] = torch.zeros(32, 4, 5, 5)
    save_file(state, str(tmp_path / "bad.safetensors"))
    with pytest.raises(EmoError, match="conv_in.weight"):
        load_sd15(EMO.from_config(CFG), tmp_path / "bad.safetensors")


def test_ckpt_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"payload": EmoError("a pickled object, not a tensor")}, path)
    with pytest.raises(EmoError, match="cannot read weights"):
        read_state_dict(path)


# -- AnimateDiff ----------------------------------------------------------------------------------------
def test_temporal_modules_match_the_public_mm_sd_v15_v2_layout():
    cfg = sd15()
    with torch.device("meta"):
        backbone = EMOUNet(block_out_channels=cfg.block_out_channels, audio_dim=cfg.token_dim, speed_dim=None)
    ours = {k: tuple(v.shape) for k, v in backbone.state_dict().items() if ".motion_modules." in k}
    assert ours == animatediff_layout()
    assert sum(torch.Size(s).numel() for k, s in ours.items() if not k.endswith(".pe")) == pytest.approx(
        453e6, rel=0.01
    )


@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors"])
def test_animatediff_checkpoint_loads_into_temporal_modules(tmp_path, suffix):
    model = EMO.from_config(CFG)
    sites = {
        k.split(".temporal_transformer")[0]: v.shape[0]
        for k, v in model.backbone.state_dict().items()
        if k.endswith("temporal_transformer.norm.weight")
    }
    gen = torch.Generator().manual_seed(3)
    state = {k: torch.randn(s, generator=gen) for k, s in animatediff_layout(sites).items()}
    state = {k: (v[:, :24] if k.endswith(".pe") else v) for k, v in state.items()}  # a v1-length table
    path = tmp_path / f"mm{suffix}"
    if suffix == ".ckpt":
        torch.save(state, path)
    else:
        from safetensors.torch import save_file

        save_file(state, str(path))
    report = load_motion_module(model, path)
    assert report.unexpected == [] and all(".speed_" in k for k in report.missing)
    own = model.backbone.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items() if not k.endswith(".pe"))


def test_motion_adapter_folder_matches_diffusers_animatediff(tmp_path, sd_folder):
    from diffusers import UNetMotionModel

    adapter = tiny_motion_adapter()
    adapter.save_pretrained(tmp_path / "adapter")

    model = EMO.from_config(CFG).eval()
    load_sd15(model, sd_folder)
    report = load_motion_module(model, tmp_path / "adapter")
    assert report.unexpected == []

    # Every adapter tensor landed where diffusers' own AnimateDiff conversion says it comes from.
    ours = model.backbone.state_dict()
    for key, value in adapter.state_dict().items():
        if "pos_embed" in key:
            continue
        site, rest = re.match(r"(.*motion_modules\.\d+)\.(.*)", key).groups()
        rest = (
            rest.replace("attn1.", "attention_blocks.0.")
            .replace("attn2.", "attention_blocks.1.")
            .replace("norm1.", "norms.0.")
            .replace("norm2.", "norms.1.")
            .replace("norm3.", "ff_norm.")
        )
        assert torch.equal(ours[f"{site}.temporal_transformer.{rest}"], value), key

    # Numerically: diffusers normalises a temporal module's input jointly over all frames, AnimateDiff's
    # original code (which the released weights were trained with, and which we follow) per frame. With one
    # frame the two agree, so the whole video UNet must match diffusers' there.
    unet = tiny_diffusers_unet()
    for name, module in unet.named_modules():
        if name.endswith("attn2"):
            torch.nn.init.zeros_(module.to_out[0].weight)
            torch.nn.init.zeros_(module.to_out[0].bias)
    video_unet = UNetMotionModel.from_unet2d(unet, adapter).eval()
    x = torch.randn(B, 4, 1, H, W)
    with torch.no_grad():
        expected = video_unet(x, 321, encoder_hidden_states=torch.randn(B, 3, 24)).sample[:, :, 0]
        got = model.backbone(x[:, :, 0], 321, num_frames=1)
    assert (got - expected).abs().max().item() <= 1e-5


# -- 2. conditioning pathways ---------------------------------------------------------------------------
def test_new_pathways_start_as_no_ops(model):
    x = inputs()
    base = run(model, x, audio=False, speed=False, mask=False, motion=False)
    assert torch.equal(run(model, x, motion=False), base)  # audio, speed and mask layers are zero


def test_audio_reaches_its_own_frame_through_audio_attention_only(model):
    perturb(model, "backbone.audio")
    x = inputs()
    base = run(model, x, motion=False)
    y = dict(x, audio=x["audio"].clone())
    y["audio"][:, 2] += 1.0
    diff = (run(model, y, motion=False) - base).abs().amax(dim=(0, 2, 3, 4))  # per frame
    assert diff[2] > 1e-3
    assert torch.all(diff[[0, 1, 3, 4, 5]] == 0)  # temporal modules still zero: no leak across frames
    perturb(model, "backbone.temporal")
    base = run(model, x, motion=False)
    diff = (run(model, y, motion=False) - base).abs().amax(dim=(0, 2, 3, 4))
    assert diff[2] > 1e-3 and torch.all(diff[[0, 1, 3, 4, 5]] > 1e-6)  # now through temporal attention


def test_motion_frames_change_the_current_frames(model):
    perturb(model, "backbone.temporal")
    x = inputs()
    y = dict(x, motion=x["motion"] + 1.0)
    diff = (run(model, x) - run(model, y)).abs().amax(dim=(0, 2, 3, 4))
    assert torch.all(diff > 1e-4)
    assert not torch.equal(run(model, x), run(model, x, motion=False))


def test_reference_image_changes_every_frame(model):
    x = inputs()
    y = dict(x, reference=torch.randn_like(x["reference"]))
    diff = (run(model, x) - run(model, y)).abs().amax(dim=(0, 2, 3, 4))
    assert torch.all(diff > 1e-4)


def test_speed_layers_change_the_output(model):
    perturb(model, "backbone.temporal")
    x = inputs()
    assert torch.equal(run(model, x), run(model, dict(x, speed=x["speed"] + 0.5)))  # zero-initialised
    perturb(model, "backbone.speed")
    diff = (run(model, x) - run(model, dict(x, speed=x["speed"] + 0.5))).abs().max()
    assert diff > 1e-4


def test_face_mask_changes_the_output(model):
    perturb(model, "face_locator")
    x = inputs()
    assert (run(model, x) - run(model, dict(x, mask=1 - x["mask"]))).abs().max() > 1e-4


def test_frame_counts_come_from_the_inputs(model):
    for frames in (1, 3, 12):
        x = inputs(frames=frames)
        assert run(model, x).shape == (B, frames, 4, H, W)


# -- 3. round-trips ---------------------------------------------------------------------------------------
def test_save_load_round_trip_is_exact(model, tmp_path):
    perturb(model)
    model.save_pretrained(tmp_path / "ckpt")
    assert (tmp_path / "ckpt/backbone/diffusion_pytorch_model.safetensors").is_file()
    loaded = EMO.from_pretrained(tmp_path / "ckpt").eval()
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = inputs()
    assert torch.equal(run(model, x), run(loaded, x))


def test_a_residual_model_denoises_the_scaled_difference_from_the_reference(tmp_path):
    """`denoised: residual` (the small model): to_denoised / from_denoised invert each other, the reference
    itself maps to zeros (what an under-trained model falls back to), and the setting survives a save."""
    from dataclasses import replace

    torch.manual_seed(0)
    frames, reference = torch.randn(2, 3, 4, H, W), torch.randn(2, 4, H, W)
    plain = EMO.from_config(CFG)
    assert plain.to_denoised(frames, reference) is frames and plain.from_denoised(frames, reference) is frames
    residual = EMO.from_config(replace(CFG, denoised="residual", residual_scale=2.5))
    x = residual.to_denoised(frames, reference)
    assert torch.allclose(x, 2.5 * (frames - reference[:, None]))
    assert torch.allclose(residual.from_denoised(x, reference), frames, atol=1e-6)
    assert residual.to_denoised(reference[:, None].expand_as(frames), reference).abs().max() == 0
    residual.save_pretrained(tmp_path / "ckpt")
    loaded = EMO.from_pretrained(tmp_path / "ckpt")
    assert (loaded.denoised, loaded.residual_scale) == ("residual", 2.5)
    plain.save_pretrained(tmp_path / "plain")
    assert EMO.from_pretrained(tmp_path / "plain").denoised == "frames"
    with pytest.raises(EmoError, match="denoised must be one of"):
        EMO.from_config(replace(CFG, denoised="x0"))


def test_missing_component_is_a_clear_error(model, tmp_path):
    model.save_pretrained(tmp_path / "ckpt")
    import shutil

    shutil.rmtree(tmp_path / "ckpt/audio_projector")
    with pytest.raises(EmoError, match="audio_projector"):
        EMO.from_pretrained(tmp_path / "ckpt")
    (tmp_path / "ckpt/face_locator/diffusion_pytorch_model.safetensors").write_bytes(b"truncated")
    model.audio_projector.save_pretrained(tmp_path / "ckpt/audio_projector")
    with pytest.raises(EmoError, match="cannot load .*face_locator"):
        EMO.from_pretrained(tmp_path / "ckpt")


def test_gradient_checkpointing_gives_the_same_output_and_gradients(model, monkeypatch):
    import emo.models.unet as unet_module

    calls = []

    def counting_checkpoint(*args, **kwargs):
        calls.append(1)
        return torch.utils.checkpoint.checkpoint(*args, **kwargs)

    monkeypatch.setattr(unet_module, "checkpoint", counting_checkpoint)
    perturb(model, "backbone.audio", "backbone.speed", "backbone.temporal", "face_locator")
    model.train()
    x = inputs()

    def loss_and_grads():
        model.zero_grad()
        ref = model.reference_features(x["reference"], x["motion"])
        cond = Conditioning(audio=x["audio"], speed=x["speed"], face_mask=x["mask"])
        out = model(x["noisy"], torch.tensor([321]), cond, ref)
        out.square().mean().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    out_plain, grads_plain = loss_and_grads()
    assert not calls
    model.enable_gradient_checkpointing()
    assert model.backbone.gradient_checkpointing
    out_ckpt, grads_ckpt = loss_and_grads()
    assert calls  # the blocks really ran under checkpoint (both UNets)
    assert torch.allclose(out_plain, out_ckpt, atol=1e-6)
    assert grads_plain.keys() == grads_ckpt.keys()
    assert any(".audio_attn." in k for k in grads_plain) and any("reference_net." in k for k in grads_plain)
    for k in grads_plain:
        assert torch.allclose(grads_plain[k], grads_ckpt[k], atol=1e-6, rtol=1e-4), k


def test_trainable_components_are_named(model):
    params = model.set_trainable(["backbone.temporal", "audio_projector"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert len(params) == len(trainable)
    temporal = {
        f"backbone.{n}" for n, pathway in parameter_pathways(model.backbone).items() if pathway == "temporal"
    }
    assert trainable == temporal | {
        f"audio_projector.{n}" for n, _ in model.audio_projector.named_parameters()
    }
    with pytest.raises(EmoError, match="backbone.tmporal"):
        model.set_trainable(["backbone.tmporal"])


def test_pathways_are_the_modules_they_are_declared_on(model):
    """Temporal modules are `temporal` but for their speed layers, audio-attention layers are `audio`, all
    else (SD1.5's layers) `spatial`: told by module type, not by parameter name."""
    from emo.models.attention import SpatialTransformerBlock
    from emo.models.temporal_module import TemporalModule, TemporalTransformerBlock

    expected = {}

    def mark(prefix: str, module: torch.nn.Module, pathway: str) -> None:
        expected.update({f"{prefix}.{name}": pathway for name, _ in module.named_parameters()})

    for prefix, module in model.backbone.named_modules():  # parents before children: children override
        if isinstance(module, TemporalModule):
            mark(prefix, module, "temporal")
        elif isinstance(module, TemporalTransformerBlock):
            mark(f"{prefix}.speed_attn", module.speed_attn, "speed")
            mark(f"{prefix}.speed_norm", module.speed_norm, "speed")
        elif isinstance(module, SpatialTransformerBlock):
            mark(f"{prefix}.audio_attn", module.audio_attn, "audio")
            mark(f"{prefix}.norm_audio", module.norm_audio, "audio")
    pathways = parameter_pathways(model.backbone)
    assert pathways == {name: expected.get(name, "spatial") for name, _ in model.backbone.named_parameters()}
    assert set(pathways.values()) == set(PATHWAYS)
    assert set(parameter_pathways(model.reference_net).values()) == {"spatial"}


def test_a_parameter_of_no_pathway_is_an_error(model):
    model.backbone.mid_block.extra = torch.nn.Linear(2, 2)  # a container, not a declared module
    with pytest.raises(ValueError, match=r"mid_block\.extra\.weight belongs to no pathway"):
        model.set_trainable(["backbone.spatial"])


def test_speed_buckets_encode_where_a_speed_lies():
    centres = bucket_centres()
    encoded = speed_buckets(torch.tensor([0.0, 1.0, 2.0]))  # (3, 9)
    assert encoded.shape == (3, 9)
    # Each bucket says "above (+) or below (-) my centre"; at a centre it is exactly 0.
    assert torch.allclose(encoded[1, 4], torch.tensor(0.0), atol=1e-6) and centres[4] == 1.0
    assert (encoded[1, :4] > 0).all() and (encoded[1, 5:] < 0).all()
    assert (encoded[2] >= encoded[1]).all() and (encoded[1] >= encoded[0]).all()


def test_tiny_preset_is_small():
    assert sum(p.numel() for p in EMO.from_config(CFG).parameters()) < 5e6


# -- speed-ups that must not change results ---------------------------------------------------------------
def test_shared_reference_tokens_equal_a_concatenated_context():
    from emo.models.attention import Attention

    torch.manual_seed(0)
    attention = Attention(32, heads=4)
    frames, x, shared = 3, torch.randn(2 * 3, 10, 32), torch.randn(2, 7, 32)
    expected = attention(x, torch.cat([x, shared.repeat_interleave(frames, dim=0)], dim=1))
    assert torch.allclose(attention(x, shared=shared, repeats=frames), expected, atol=1e-6)


def test_temporal_attention_of_the_current_frames_only_is_their_rows_of_the_full_one():
    from emo.models.temporal_module import TemporalAttention

    torch.manual_seed(0)
    attention = TemporalAttention(32, heads=4, max_len=16)
    batch, frames, current, tokens = 2, 7, 5, 6
    x = torch.randn(batch * frames, tokens, 32)
    full = attention(x, frames).view(batch, frames, tokens, 32)[:, frames - current :]
    assert torch.allclose(attention(x, frames, current).view(batch, current, tokens, 32), full, atol=1e-6)


def test_every_backbone_convolution_sees_nchw_memory(model):
    # Token <-> image rearranges leave channels-last strides; convolutions fed those run against NCHW
    # weights with a weight reorder per call (measured 2x slower on CPU). The default layout must hold.
    layouts = []
    for name, module in model.backbone.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            module.register_forward_pre_hook(
                lambda m, args, name=name: layouts.append((name, args[0].is_contiguous()))
            )
    run(model, inputs())
    assert layouts and [name for name, ok in layouts if not ok] == []
