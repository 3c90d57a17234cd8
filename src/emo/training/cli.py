"""Train one EMO stage (EMO.md §3), or export a run's weights for `emo generate`.

  emo train CONFIG.yaml [--resume auto|CHECKPOINT] [--max-steps N] [section.key=value ...]
  emo train export RUN_DIR|CHECKPOINT --out DIR [--vae PATH] [--audio-encoder PATH] [--no-ema]

The same command runs on one CPU, one GPU, several GPUs or nodes:
  accelerate launch --config_file configs/accelerate/multi_gpu.yaml -m emo.cli train configs/stage2.yaml
(see docs/training.md). Overrides use dotted config names, e.g. train.lr=2e-5 run.output_dir=runs/s1.
A run writes RUN_DIR/checkpoints/step_*/ (resumable), logs/ (TensorBoard), samples/ (validation videos),
metrics.jsonl and base/ (the network it started from).
"""

from __future__ import annotations

HELP = "train a stage from a YAML config (resumable, 1 CPU to many GPUs); `emo train export` its weights"


def add_arguments(parser) -> None:
    parser.add_argument(
        "target",
        nargs="+",
        metavar="ARG",
        help="CONFIG.yaml [section.key=value ...], or: export RUN_DIR|CHECKPOINT",
    )
    run = parser.add_argument_group("training")
    run.add_argument(
        "--resume",
        metavar="auto|PATH",
        help="continue from the latest checkpoint of run.output_dir (auto) or from PATH",
    )
    run.add_argument("--max-steps", type=int, metavar="N", help="override train.max_steps")
    exp = parser.add_argument_group("export")
    exp.add_argument("--out", metavar="DIR", help="export: the --weights directory to write")
    exp.add_argument(
        "--codec",
        "--vae",
        dest="codec",
        metavar="PATH",
        help="export: latent codec to include (default: the run's)",
    )
    exp.add_argument(
        "--half", action="store_true", help="export: store the network in float16 (half the size)"
    )
    exp.add_argument(
        "--audio-encoder", metavar="PATH", help="export: wav2vec2 folder to include as wav2vec2/"
    )
    exp.add_argument(
        "--no-ema", action="store_true", help="export: the raw weights even if the run kept an EMA"
    )
    exp.add_argument("--overwrite", action="store_true", help="export: replace --out if it exists")


def run(args) -> int:
    from emo.errors import EmoError

    if args.target[0] == "export":
        if len(args.target) != 2:
            raise EmoError("usage: emo train export RUN_DIR|CHECKPOINT --out DIR")
        if not args.out:
            raise EmoError("emo train export needs --out DIR")
        if args.resume or args.max_steps is not None:
            raise EmoError("--resume / --max-steps are training options, not export options")
        from emo.training.export import export

        out = export(
            args.target[1],
            args.out,
            codec=args.codec,
            audio_encoder=args.audio_encoder,
            use_ema=not args.no_ema,
            overwrite=args.overwrite,
            half=args.half,
        )
        print(f"wrote {out} (use it with: emo generate --weights {out})")
        return 0

    if args.out or args.codec or args.audio_encoder or args.no_ema or args.overwrite or args.half:
        raise EmoError(
            "--out / --codec / --audio-encoder / --no-ema / --overwrite / --half belong to `emo train export`"
        )
    config, *overrides = args.target
    if args.max_steps is not None:
        overrides.append(f"train.max_steps={args.max_steps}")
    from emo.training.config import load_config
    from emo.training.trainer import Trainer

    cfg = load_config(config, overrides)
    result = Trainer(cfg).fit(resume=args.resume)
    if result.losses:
        last = max(result.losses)
        print(
            f"stage {cfg.stage}: step {result.step}, loss {result.losses[last]:.4f}; "
            f"last checkpoint {result.last_checkpoint}"
        )
    return 0
