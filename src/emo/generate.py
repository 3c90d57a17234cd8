"""Generate a talking/singing portrait video from one image and an audio track.

examples:
  emo generate --preset tiny --image examples/portrait.jpg --audio examples/speech.wav --out demo.mp4
  emo generate --weights ckpt/ --image me.png --audio song.mp3 --out me.mp4 --speed 1.1 --region wide
  emo generate --weights ckpt/ --batch jobs.json        # [{"image": .., "audio": .., "out": .., "seed": 0}, ..]

speed: head rotation speed in degrees per frame at 30 fps, constant over the video. EMO's ranges: speech
0.1-1.0, singing 1.0-1.3; above ~1.5 motion gets jittery.
region: where the face may move. face (default: the portrait's face box), wide (more head sway), tall
(nodding), full (the face is free to move), or x0,y0,x1,y1 in pixels of the square crop.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

from emo.errors import EmoError

HELP = "portrait + audio -> talking/singing mp4"
log = logging.getLogger(__name__)
JOB_KEYS = {"image", "audio", "out", "seed", "speed", "region"}


def add_arguments(parser) -> None:
    io = parser.add_argument_group("inputs and output")
    io.add_argument("--image", help="portrait image (jpg/png/webp...)")
    io.add_argument("--audio", help="speech or singing (wav/mp3/m4a/flac/ogg, or the audio of an mp4/mov)")
    io.add_argument("--out", help="output .mp4 (written atomically)")
    io.add_argument(
        "--batch",
        metavar="JOBS",
        help="JSON list or CSV of jobs (image,audio,out[,seed,speed,region]); the model is loaded once",
    )
    io.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    model = parser.add_argument_group("model")
    source = model.add_mutually_exclusive_group()
    source.add_argument(
        "--weights", metavar="DIR", help="trained EMO checkpoint directory (from `emo train export`)"
    )
    source.add_argument(
        "--preset", choices=["tiny"], help="random tiny model: a smoke run, its video is noise"
    )
    model.add_argument("--vae", metavar="PATH", help="SD VAE diffusers folder (default: WEIGHTS/vae)")
    model.add_argument(
        "--audio-encoder", metavar="PATH", help="wav2vec2 transformers folder (default: WEIGHTS/wav2vec2)"
    )
    model.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    model.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="compute precision (default: bfloat16 on GPU, float32 on CPU)",
    )
    model.add_argument("--channels-last", action="store_true", help="channels-last memory format (GPU speed)")
    model.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the backbone (GPU speed; the first clip pays the compile time)",
    )
    model.add_argument(
        "--cache-dir",
        default=str(Path.home() / ".cache" / "emo" / "audio"),
        help="audio-feature cache (default: %(default)s)",
    )
    model.add_argument("--no-cache", action="store_true", help="do not cache audio features")
    gen = parser.add_argument_group("generation")
    gen.add_argument(
        "--steps", type=int, default=40, help="denoising steps (default 40; <35 jitters, EMO paper)"
    )
    gen.add_argument("--sampler", default="ddim", choices=["ddim", "dpm++"], help="default ddim (EMO paper)")
    gen.add_argument(
        "--speed",
        type=float,
        default=0.7,
        help="head speed, deg/frame: speech 0.1-1.0, singing 1.0-1.3 (default 0.7)",
    )
    gen.add_argument(
        "--region", default="face", help="face | wide | tall | full | x0,y0,x1,y1 (default face)"
    )
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument(
        "--reference-guidance", type=float, default=1.0, help="CFG scale on the portrait (1.0 = off)"
    )
    gen.add_argument("--audio-guidance", type=float, default=1.0, help="CFG scale on the audio (1.0 = off)")
    gen.add_argument("--fps", type=float, default=30.0, help="output frame rate (default 30, EMO paper)")
    gen.add_argument("--size", type=int, default=512, help="output side in pixels (default 512)")
    gen.add_argument(
        "--max-duration",
        type=float,
        default=600.0,
        help="refuse longer audio unless raised (seconds, 0 = no limit; default 600)",
    )
    gen.add_argument("--strict", action="store_true", help="several faces in the portrait is an error")
    gen.add_argument("--quiet", action="store_true", help="no progress bar")


def _resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise EmoError(f"--device {name!r} is not a device (try cpu or cuda)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EmoError("--device cuda but no CUDA GPU is available; use --device cpu")
    return device


def _resolve_dtype(name: str, device):
    import torch

    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def quiet_third_party_logs() -> None:
    """Keep the terminal to emo's own progress: no per-file loading bars or notices from the libraries."""
    import diffusers
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()


def read_jobs(path: str | Path) -> list[dict]:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise EmoError(f"cannot read --batch {path}: {exc.strerror}") from None
    try:
        jobs = json.loads(text) if path.suffix.lower() == ".json" else list(csv.DictReader(text.splitlines()))
    except json.JSONDecodeError as exc:
        raise EmoError(f"--batch {path} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    if not isinstance(jobs, list) or not jobs:
        raise EmoError(f"--batch {path} must hold a non-empty list of jobs")
    for i, job in enumerate(jobs):
        if not isinstance(job, dict) or not {"image", "audio", "out"} <= job.keys():
            raise EmoError(f"--batch {path}: job {i} needs image, audio and out")
        unknown = set(job) - JOB_KEYS
        if unknown:
            raise EmoError(f"--batch {path}: job {i} has unknown field(s) {', '.join(sorted(unknown))}")
    return jobs


def run(args) -> int:
    from emo.pipeline import EMOPipeline, GenerationOptions

    if args.batch:
        if args.image or args.audio or args.out:
            raise EmoError("--batch replaces --image/--audio/--out; give one or the other")
        jobs = read_jobs(args.batch)
    else:
        missing = [
            flag
            for flag, value in (("--image", args.image), ("--audio", args.audio), ("--out", args.out))
            if not value
        ]
        if missing:
            raise EmoError(f"missing {', '.join(missing)} (or use --batch JOBS)")
        jobs = [{"image": args.image, "audio": args.audio, "out": args.out}]
    if not args.weights and not args.preset:
        raise EmoError(
            "choose the model: --weights DIR (a trained checkpoint) or --preset tiny (a smoke run)"
        )

    base = GenerationOptions(
        steps=args.steps,
        sampler=args.sampler,
        speed=args.speed,
        region=args.region,
        seed=args.seed,
        reference_guidance=args.reference_guidance,
        audio_guidance=args.audio_guidance,
        fps=args.fps,
        size=args.size,
        max_duration=args.max_duration,
        strict=args.strict,
    )
    base.validate()
    from emo.conditioning.face import parse_region

    parse_region(args.region)  # a bad --region fails before the model loads
    for job in jobs:
        out = Path(job["out"])
        if out.exists() and not args.overwrite:
            raise EmoError(f"{out} exists; pass --overwrite to replace it")
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EmoError(f"cannot create the output folder {out.parent}: {exc.strerror}") from None

    for job in jobs:  # fail before the model loads
        for key in ("image", "audio"):
            if not Path(job[key]).is_file():
                raise EmoError(f"{key} file not found: {job[key]}")
    quiet_third_party_logs()
    device = _resolve_device(args.device)
    dtype = _resolve_dtype(args.dtype, device)
    cache = None if args.no_cache else args.cache_dir
    if args.preset:
        print(
            "emo: --preset tiny: a RANDOM tiny model, for smoke runs; the video shows noise, not a face. "
            "Use --weights for real results."
        )
        pipe = EMOPipeline.tiny(device, dtype, cache_dir=cache)
    else:
        pipe = EMOPipeline.from_weights(args.weights, args.vae, args.audio_encoder, device, dtype, cache)

    pipe.optimize(channels_last=args.channels_last, compile=args.compile)
    failures = 0
    for job in jobs:
        opts = base
        overrides = {
            k: type(getattr(base, k))(job[k])
            for k in ("seed", "speed", "region")
            if job.get(k) not in (None, "")
        }
        if overrides:
            from dataclasses import replace

            opts = replace(base, **overrides)
        try:
            result = pipe.generate(
                job["image"],
                job["audio"],
                job["out"],
                opts,
                overwrite=args.overwrite,
                progress=not args.quiet,
            )
        except EmoError as exc:
            if len(jobs) == 1:
                raise
            failures += 1
            print(f"emo: error: {exc}")
            continue
        print(result.summary())
    if failures:
        raise EmoError(f"{failures} of {len(jobs)} jobs failed (see above)")
    return 0
