"""Generate a talking/singing portrait video from one image and an audio track.

examples:
  emo generate --image examples/anchor_portrait.jpg --audio examples/anchor_speech.wav --out demo.mp4   # the shipped small model
  emo generate --preset tiny --image examples/portrait.jpg --audio examples/speech.wav --out noise.mp4
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
import math
import sys
from pathlib import Path

from emo.assets import SHIPPED_MODELS
from emo.devices import resolve_device
from emo.errors import EmoError
from emo.generation import AUDIO_GUIDANCE_REGIONS
from emo.media import check_input, check_video_output

HELP = "portrait + audio -> talking/singing mp4"
log = logging.getLogger(__name__)
PATH_KEYS = ("image", "audio", "out")  # required in every job
OPTION_KEYS = ("seed", "speed", "region")  # optional per-job overrides of the command-line values


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
    add_model_arguments(parser)
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
    gen.add_argument(
        "--seed", type=int, default=0, help="noise seed: the same seed gives the same video (default 0)"
    )
    gen.add_argument(
        "--reference-guidance", type=float, default=1.0, help="CFG scale on the portrait (1.0 = off)"
    )
    gen.add_argument(
        "--audio-guidance",
        type=float,
        help="CFG scale on the audio: above 1 the audio-driven motion is scaled up (1.0 = off; default: the "
        "model's own, 1.0 where it sets none)",
    )
    gen.add_argument(
        "--audio-guidance-region",
        choices=AUDIO_GUIDANCE_REGIONS,
        help="where the audio guidance applies: frame (everywhere) or mouth (the lower face; the rest is "
        "denoised unguided, which keeps the face) (default: the model's own, frame where it sets none)",
    )
    gen.add_argument(
        "--mouth-guidance",
        type=float,
        help="0-1: how far the generated lips are moved to the opening the audio calls for, by the model's "
        "mouth guide (the shipped small model's lip sync); 0 = off (default: 1 if the model has one)",
    )
    gen.add_argument(
        "--strength",
        type=float,
        help="1.0 (the paper): denoise from pure noise; below 1, from the portrait noised that far (SDEdit): "
        "the frames keep the portrait's layout and the model redraws the rest (mouth, eyes, small motion); "
        "lower stays closer to the portrait (default: the model's own, 1.0 where it sets none)",
    )
    gen.add_argument("--fps", type=float, default=30.0, help="output frame rate (default 30, EMO paper)")
    gen.add_argument(
        "--size",
        type=int,
        help="output side in pixels (default: the size the model was trained at; 512 where the checkpoint "
        "does not say)",
    )
    gen.add_argument(
        "--max-duration",
        type=float,
        default=600.0,
        help="refuse longer audio unless raised (seconds, 0 = no limit; default 600)",
    )
    gen.add_argument("--strict", action="store_true", help="several faces in the portrait is an error")
    gen.add_argument("--quiet", action="store_true", help="no progress bar")


def add_model_arguments(parser) -> None:
    """The model flags, shared with `emo ui`."""
    model = parser.add_argument_group("model")
    source = model.add_mutually_exclusive_group()
    source.add_argument(
        "--weights", metavar="DIR", help="trained EMO checkpoint directory (from `emo train export`)"
    )
    source.add_argument(
        "--model",
        choices=SHIPPED_MODELS,
        help="a trained model shipped with emo (the default: small, 128², trained on a few minutes of "
        "talking heads: src/emo/assets/small/MODEL.md)",
    )
    source.add_argument(
        "--preset", choices=["tiny"], help="random tiny model: a smoke run, its video is noise"
    )
    model.add_argument(
        "--codec",
        "--vae",
        dest="codec",
        metavar="PATH",
        help="latent codec: SD VAE diffusers folder, tiny-autoencoder folder or taef2 (default: WEIGHTS/codec "
        "or WEIGHTS/vae)",
    )
    model.add_argument(
        "--audio-encoder",
        metavar="PATH",
        help="wav2vec2 transformers folder, for a model trained on wav2vec2 (default: WEIGHTS/wav2vec2)",
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
    """The jobs of a --batch file (a JSON list of objects, or a CSV with a header row), checked and coerced.

    Every job has image, audio and out (non-empty strings) and may set seed (int), speed (float) and region;
    an empty CSV cell or a JSON null keeps the command-line value. Any problem is an EmoError naming the job
    (1-based) and the field, raised before a model is loaded.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise EmoError(f"cannot read --batch {path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        jobs = json.loads(text) if path.suffix.lower() == ".json" else list(csv.DictReader(text.splitlines()))
    except json.JSONDecodeError as exc:
        raise EmoError(f"--batch {path} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    except csv.Error as exc:
        raise EmoError(f"--batch {path} is not valid CSV: {exc}") from None
    if not isinstance(jobs, list) or not jobs:
        raise EmoError(f"--batch {path} must hold a non-empty list of jobs")
    checked = [_check_job(job, f"--batch {path}: job {i}") for i, job in enumerate(jobs, 1)]
    first_job = {}  # resolved out path -> the job writing it
    for i, job in enumerate(checked, 1):
        out = Path(job["out"]).resolve()
        if out in first_job:
            raise EmoError(f"--batch {path}: jobs {first_job[out]} and {i} both write {job['out']}")
        first_job[out] = i
    return checked


def _check_job(job, where: str) -> dict:
    if not isinstance(job, dict):
        raise EmoError(f"{where} must be an object with image, audio and out, got {type(job).__name__}")
    if None in job:  # csv.DictReader files cells beyond the header under None
        raise EmoError(f"{where} has more cells than the header has columns")
    unknown = sorted(set(job) - set(PATH_KEYS) - set(OPTION_KEYS))
    if unknown:
        raise EmoError(
            f"{where} has unknown field(s) {', '.join(map(str, unknown))}; "
            f"use {', '.join(PATH_KEYS + OPTION_KEYS)}"
        )
    checked = {}
    for key in PATH_KEYS:
        value = job.get(key)
        if value is None:
            raise EmoError(f"{where} has no {key} (image, audio and out are required)")
        if not isinstance(value, str) or not value.strip():
            raise EmoError(f"{where}: {key} must be a file path, got {value!r}")
        checked[key] = value
    for key in OPTION_KEYS:
        value = job.get(key)
        if value is None or (isinstance(value, str) and not value.strip()):
            continue  # keep the command-line value
        checked[key] = _coerce_option(key, value, where)
    return checked


def _coerce_option(key: str, value, where: str):
    if key == "region":
        from emo.conditioning.face import parse_region

        if not isinstance(value, str):
            raise EmoError(f"{where}: region must be face, wide, tall, full or x0,y0,x1,y1, got {value!r}")
        try:
            parse_region(value)
        except EmoError as exc:
            raise EmoError(f"{where}: {exc}") from None
        return value
    number = _number(value)
    if key == "seed":
        if isinstance(number, float) and number.is_integer():
            number = int(number)  # 3.0 is seed 3; 1.5 is not a seed
        if not isinstance(number, int):
            raise EmoError(f"{where}: seed must be an integer, got {value!r}")
        return number
    if number is None or not math.isfinite(number):
        raise EmoError(f"{where}: speed must be a finite number (degrees/frame), got {value!r}")
    return float(number)


def _number(value) -> int | float | None:
    """A JSON number or a CSV cell as an int or float; None if it is neither."""
    if isinstance(value, bool):  # JSON true is not 1
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        for parse in (int, float):
            try:
                return parse(value.strip())
            except ValueError:
                pass
    return None


def model_weights(args) -> Path:
    """The checkpoint folder the model flags name: --weights DIR, else the shipped --model (small)."""
    from emo.assets import shipped_model_dir

    return Path(args.weights) if args.weights else shipped_model_dir(args.model or "small")


# Options whose default is the model's own (model_defaults)
MODEL_SET = ("size", "strength", "audio_guidance", "audio_guidance_region")


def fallback() -> dict:
    """MODEL_SET's values where the model sets none (the tiny preset, older checkpoints): GenerationOptions'."""
    from emo.generation.pipeline import GenerationOptions

    return {k: getattr(GenerationOptions, k) for k in MODEL_SET}


def model_options(args) -> dict:
    """MODEL_SET's options as given, else as the chosen model sets them (its model_defaults), else
    GenerationOptions' defaults."""
    from emo.generation.pipeline import model_defaults

    own = {} if args.preset else model_defaults(model_weights(args))
    given = {k: getattr(args, k) for k in MODEL_SET}
    base = fallback()
    return {k: given[k] if given[k] is not None else own.get(k, base[k]) for k in MODEL_SET}


def load_pipeline(args):
    """The pipeline the model flags (`add_model_arguments`) describe, loaded once."""
    from emo.generation.pipeline import EMOPipeline

    device = resolve_device(args.device)
    dtype = _resolve_dtype(args.dtype, device)

    quiet_third_party_logs()
    cache = None if args.no_cache else args.cache_dir
    if args.preset:
        print(
            "emo: --preset tiny: a RANDOM tiny model, for smoke runs; the video shows noise, not a face. "
            "Use --weights or the shipped model for real results."
        )
        pipe = EMOPipeline.tiny(device, dtype, cache_dir=cache)
    else:
        pipe = EMOPipeline.from_weights(
            model_weights(args), args.codec, args.audio_encoder, device, dtype, cache
        )

    pipe.optimize(channels_last=args.channels_last, compile=args.compile)
    return pipe


def run(args) -> int:
    from dataclasses import replace

    from emo.generation.pipeline import GenerationOptions

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
    base = GenerationOptions(
        steps=args.steps,
        sampler=args.sampler,
        speed=args.speed,
        region=args.region,
        seed=args.seed,
        reference_guidance=args.reference_guidance,
        mouth_guidance=args.mouth_guidance,
        fps=args.fps,
        **model_options(args),
        max_duration=args.max_duration,
        strict=args.strict,
    )
    base.validate()  # a bad option (--region included) fails before the model loads
    options = []
    for i, job in enumerate(jobs, 1):
        try:
            opts = replace(base, **{k: job[k] for k in OPTION_KEYS if k in job})
            opts.validate()
            # Inputs before outputs, and nothing created yet: a job with a missing input leaves no folder.
            for key in ("image", "audio"):
                check_input(job[key], key)
            check_video_output(job["out"], args.overwrite)
        except EmoError as exc:
            raise EmoError(f"--batch {args.batch}: job {i}: {exc}" if args.batch else str(exc)) from None
        options.append(opts)
    pipe = load_pipeline(args)
    failures = 0
    for job, opts in zip(jobs, options):
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
            print(f"emo: error: {exc}", file=sys.stderr)
            continue
        print(result.summary())
    if failures:
        raise EmoError(f"{failures} of {len(jobs)} jobs failed (see above)")
    return 0
