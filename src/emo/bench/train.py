"""Training step time and peak memory per stage, on synthetic data of the real shapes.

  emo bench train [--stages 1 2 3] [--preset tiny|sd15] [--size S] [--batch B] [--steps N]

The network and VAE are random (the preset's shapes), the data random tensors in the dataset item format,
so the figure is the cost of one optimizer step (VAE encode + ReferenceNet + backbone forward/backward +
AdamW) and nothing else. Other jobs on the machine change the numbers: they are measured, not asserted.
"""

from __future__ import annotations

HELP = "seconds per training step of each stage (VAE encode, forward, backward, optimizer), peak memory"


def add_arguments(parser) -> None:
    parser.add_argument("--stages", type=int, nargs="+", default=[1, 2, 3], choices=[1, 2, 3])
    parser.add_argument("--preset", default="tiny", help="model preset: tiny (CPU) or sd15 (GPU)")
    parser.add_argument("--size", type=int, help="frame size in pixels (default: 64 tiny, 512 sd15)")
    parser.add_argument("--batch", type=int, default=2, help="per-device batch (default 2)")
    parser.add_argument("--frames", type=int, default=12, help="f, current frames in stages 2/3 (default 12)")
    parser.add_argument("--motion", type=int, default=4, help="n, motion frames in stages 2/3 (default 4)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up step (default 5)")
    parser.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"])
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch intra-op threads (default: torch's choice); on a busy "
        "shared CPU, 1 avoids threads waiting on each other",
    )


class SyntheticClips:
    """Random items in the dataset format (stage 1 or stages 2/3) with the network's audio shapes."""

    def __init__(
        self, video: bool, size: int, n: int, f: int, window: int, layers: int, dim: int, length: int = 64
    ):
        self.video, self.size, self.n, self.f = video, size, n, f
        self.window, self.layers, self.dim, self.length = window, layers, dim, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        import torch

        g = torch.Generator().manual_seed(index)
        s = self.size
        mask = torch.zeros(1, s, s)
        mask[:, s // 4 : 3 * s // 4, s // 4 : 3 * s // 4] = 1
        item = {
            "reference": torch.rand(3, s, s, generator=g) * 2 - 1,
            "mask": mask,
            "clip_id": f"synthetic_{index}",
        }
        if not self.video:
            return {**item, "target": torch.rand(3, s, s, generator=g) * 2 - 1}
        return {
            **item,
            "frames": torch.rand(self.n + self.f, 3, s, s, generator=g) * 2 - 1,
            "audio": torch.randn(self.f, self.window, self.layers, self.dim, generator=g),
            "speed": torch.rand(self.f, self.window, generator=g),
        }


def random_vae(preset: str):
    if preset == "tiny":
        from emo.tiny import tiny_vae

        return tiny_vae()
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        scaling_factor=0.18215,
    )


def run(args) -> int:
    import json
    import statistics
    import tempfile
    from pathlib import Path

    import torch

    from emo.codec import SDVAECodec
    from emo.config import preset
    from emo.models import EMO
    from emo.training.config import config_from_dict
    from emo.training.trainer import Trainer

    if args.threads:
        torch.set_num_threads(args.threads)
    size = args.size or (64 if args.preset == "tiny" else 512)
    model_cfg = preset(args.preset)
    print(
        f"emo bench train: preset {args.preset}, {size}², batch {args.batch}, f={args.frames}, n={args.motion}, "
        f"{args.mixed_precision}, device {'cuda' if torch.cuda.is_available() else 'cpu'}, "
        f"{torch.get_num_threads()} threads"
    )
    for stage in args.stages:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = config_from_dict(
                {
                    "stage": stage,
                    "model": args.preset,
                    "codec": "(random)",
                    "init": {"checkpoint": "(random)"} if stage > 1 else {},
                    "data": {
                        "dataset": "(synthetic)",
                        "num_motion_frames": args.motion,
                        "num_frames": args.frames,
                        "num_workers": 0,
                    },
                    "train": {
                        "batch_size": args.batch,
                        "max_steps": args.steps + 1,
                        "mixed_precision": args.mixed_precision,
                        "gradient_checkpointing": args.gradient_checkpointing,
                    },
                    "run": {"output_dir": tmp, "checkpoint_every": 10**9, "validate_every": 0},
                },
                "bench",
            )
            data = SyntheticClips(
                stage > 1,
                size,
                args.motion,
                args.frames,
                2 * model_cfg.audio_window + 1,
                model_cfg.audio_layers,
                model_cfg.audio_feature_dim,
            )
            torch.manual_seed(0)
            trainer = Trainer(
                cfg, dataset=data, codec=SDVAECodec(random_vae(args.preset)), model=EMO.from_config(model_cfg)
            )
            trainer.fit()
            records = [json.loads(line) for line in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
            times = [r["step_s"] for r in records[1:]]  # the first step warms up allocators and kernels
            trained = sum(p.numel() for p in trainer.trainable.values()) / 1e6
            print(
                f"stage {stage}: {statistics.median(times):.3f} s/step (median of {len(times)}, min {min(times):.3f}), "
                f"{args.batch / statistics.median(times):.2f} samples/s, {trained:.2f}M trained parameters, "
                f"peak memory {records[-1]['memory_mib']:.0f} MiB"
            )
    return 0
