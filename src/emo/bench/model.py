"""`emo bench model`: parameters per component, backbone speed against diffusers' plain SD1.5 UNet, memory.

Both sides run the same batch (F frames of one clip at the given latent size) with random weights; each side
runs in its own process (``--child emo|diffusers``) so peak memory is its own. The backbone runs with
everything on: reference tokens, n motion frames, audio and speed tokens and the face mask.
"""

from __future__ import annotations

import json
import time

from emo.bench.child import add_child_option, measure_in_child
from emo.devices import resolve_device
from emo.errors import EmoError

HELP = "parameters, backbone forward time vs plain SD1.5 UNet, peak memory"


def add_arguments(parser) -> None:
    parser.add_argument(
        "--preset", default="tiny", choices=["tiny", "sd15"], help="model preset (default: tiny)"
    )
    parser.add_argument("--frames", type=int, default=12, help="frames per clip (default 12, EMO's f)")
    parser.add_argument("--motion-frames", type=int, default=4, help="motion frames n (default 4)")
    parser.add_argument("--latent", type=int, default=32, help="latent side (default 32, i.e. 256² pixels)")
    parser.add_argument("--repeats", type=int, default=2, help="timed forwards after one warm-up")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    add_child_option(parser, choices=["emo", "diffusers"])  # which side this child measures


def _timed(fn, repeats: int, device) -> float:
    import torch

    fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def _peak_mib(device) -> float:
    import torch

    from emo.resources import peak_rss_mib

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mib()


def _measure(args) -> dict:
    import torch

    from emo.config import preset
    from emo.models import EMO, Conditioning

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device, dtype = resolve_device(args.device), getattr(torch, args.dtype)
    cfg = preset(args.preset)
    f, n, s = args.frames, args.motion_frames, args.latent
    noisy = torch.randn(1 * f, 4, s, s, device=device, dtype=dtype)
    if args.child == "diffusers":
        from diffusers import UNet2DConditionModel

        heads = cfg.num_attention_heads
        down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention_blocks)
        up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in cfg.attention_blocks[::-1])
        unet = UNet2DConditionModel(
            block_out_channels=cfg.block_out_channels,
            layers_per_block=cfg.layers_per_block,
            down_block_types=down,
            up_block_types=up,
            attention_head_dim=heads,
            norm_num_groups=cfg.norm_num_groups,
            cross_attention_dim=cfg.token_dim,
        )
        unet = unet.to(device, dtype).eval()
        text = torch.randn(f, 77, cfg.token_dim, device=device, dtype=dtype)
        with torch.no_grad():
            seconds = _timed(lambda: unet(noisy, 500, encoder_hidden_states=text), args.repeats, device)
        return {
            "seconds": seconds,
            "peak_mib": _peak_mib(device),
            "params": sum(p.numel() for p in unet.parameters()),
        }

    model = EMO.from_config(cfg).to(device, dtype).eval()
    params = {name: sum(p.numel() for p in module.parameters()) for name, module in model.named_children()}
    params.update(
        {f"backbone.{k}": sum(p.numel() for p in v) for k, v in model.backbone.parameter_groups().items()}
    )
    m = cfg.audio_window
    cond = Conditioning(
        audio=torch.randn(
            1, f, 2 * m + 1, cfg.audio_layers, cfg.audio_feature_dim, device=device, dtype=dtype
        ),
        speed=torch.rand(1, f, 2 * cfg.audio_window + 1, device=device, dtype=dtype),
        face_mask=torch.ones(1, 1, s * 8, s * 8, device=device, dtype=dtype),
    )
    with torch.no_grad():
        ref_seconds = time.perf_counter()
        ref = model.reference_features(
            torch.randn(1, 4, s, s, device=device, dtype=dtype),
            torch.randn(1, n, 4, s, s, device=device, dtype=dtype),
        )
        ref_seconds = time.perf_counter() - ref_seconds
        timestep = torch.tensor([500], device=device)
        seconds = _timed(lambda: model(noisy.view(1, f, 4, s, s), timestep, cond, ref), args.repeats, device)
    return {
        "seconds": seconds,
        "reference_seconds": ref_seconds,
        "peak_mib": _peak_mib(device),
        "params": params,
    }


def count_flops(args) -> dict:
    """Forward FLOPs of both sides, counted on the meta device (shapes only: no memory, no time)."""
    import torch
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    from emo.config import preset
    from emo.models import EMO, Conditioning

    cfg = preset(args.preset)
    f, n, s = args.frames, args.motion_frames, args.latent
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention_blocks)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in cfg.attention_blocks[::-1])
    with torch.device("meta"), torch.no_grad():
        model = EMO.from_config(cfg).eval()
        unet = UNet2DConditionModel(
            block_out_channels=cfg.block_out_channels,
            layers_per_block=cfg.layers_per_block,
            down_block_types=down,
            up_block_types=up,
            attention_head_dim=cfg.num_attention_heads,
            norm_num_groups=cfg.norm_num_groups,
            cross_attention_dim=cfg.token_dim,
        )
        cond = Conditioning(
            audio=torch.randn(1, f, 2 * cfg.audio_window + 1, cfg.audio_layers, cfg.audio_feature_dim),
            speed=torch.rand(1, f, 2 * cfg.audio_window + 1),
            face_mask=torch.ones(1, 1, s * 8, s * 8),
        )
        with FlopCounterMode(display=False) as reference:
            ref = model.reference_features(torch.randn(1, 4, s, s), torch.randn(1, n, 4, s, s))
        with FlopCounterMode(display=False) as backbone:
            model(torch.randn(1, f, 4, s, s), torch.tensor([500]), cond, ref)
        with FlopCounterMode(display=False) as plain:
            unet(torch.randn(f, 4, s, s), 500, encoder_hidden_states=torch.randn(f, 77, cfg.token_dim))
    return {
        "backbone": backbone.get_total_flops(),
        "plain": plain.get_total_flops(),
        "reference": reference.get_total_flops(),
    }


def run(args) -> int:
    if args.child:
        print(json.dumps(_measure(args)))
        return 0
    for name, value in (
        ("--frames", args.frames),
        ("--latent", args.latent),
        ("--repeats", args.repeats),
        ("--threads", args.threads),
    ):
        if value < 1:
            raise EmoError(f"{name} must be >= 1, got {value}")
    if args.motion_frames < 0:
        raise EmoError(f"--motion-frames must be >= 0, got {args.motion_frames}")
    resolve_device(args.device)
    results = {}
    for part in ("diffusers", "emo"):
        results[part] = measure_in_child(
            "model",
            [
                "--child",
                part,
                "--preset",
                args.preset,
                "--frames",
                str(args.frames),
                "--motion-frames",
                str(args.motion_frames),
                "--latent",
                str(args.latent),
                "--repeats",
                str(args.repeats),
                "--threads",
                str(args.threads),
                "--device",
                args.device,
                "--dtype",
                args.dtype,
            ],
        )
    emo, plain = results["emo"], results["diffusers"]
    print(
        f"preset {args.preset}: {args.frames} frames + {args.motion_frames} motion frames, latent "
        f"{args.latent}x{args.latent}, {args.device} {args.dtype}, {args.threads} threads"
    )
    print("parameters:")
    for name, count in emo["params"].items():
        print(f"  {name:<22} {count / 1e6:10.2f} M")
    print(f"  {'plain SD UNet':<22} {plain['params'] / 1e6:10.2f} M")
    print(f"ReferenceNet pass (reference + motion frames, once per clip): {emo['reference_seconds']:.2f} s")
    print(f"backbone forward:       {emo['seconds']:.2f} s   peak memory {emo['peak_mib']:.0f} MiB")
    print(f"plain SD UNet forward:  {plain['seconds']:.2f} s   peak memory {plain['peak_mib']:.0f} MiB")
    print(f"ratio backbone / plain UNet: {emo['seconds'] / plain['seconds']:.2f}x (time)")
    flops = count_flops(args)
    print(
        f"forward FLOPs: backbone {flops['backbone'] / 1e12:.3f} T, plain UNet {flops['plain'] / 1e12:.3f} T "
        f"({flops['backbone'] / flops['plain']:.2f}x), ReferenceNet pass {flops['reference'] / 1e12:.3f} T"
    )
    return 0
