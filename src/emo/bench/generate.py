"""`emo bench generate`: seconds per frame and peak memory against audio length (tiny preset on CPU by default).

Each audio length runs in its own process (``--child SECONDS``) so its peak RSS is its own; flat memory
means a 60 s track peaks about where a 5 s one does (frames are streamed to the encoder, never held).
The tiny model's audio features are 3 x 32 per frame, too small to show what a long track costs;
``--audio-shape base`` gives it wav2vec2-base-shaped ones (13 x 768, about 20 KiB per frame in float16),
as a real model holds. By default the portrait is ``emo/assets/portrait.jpg`` and the audio the speech
track of ``emo/assets/hdtf_speech_256_4s.mp4`` (4 s, looped to each length).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from emo.bench import ASSETS
from emo.bench.child import add_child_option, measure_in_child
from emo.errors import EmoError

HELP = "generation s/frame and peak memory for short vs long audio"


def add_arguments(parser) -> None:
    parser.add_argument("--lengths", default="5,60", help="audio lengths in seconds (default 5,60)")
    parser.add_argument("--size", type=int, default=256, help="output side (default 256)")
    parser.add_argument("--steps", type=int, default=4, help="denoising steps (default 4)")
    parser.add_argument("--weights", help="a trained checkpoint instead of the random tiny preset")
    parser.add_argument(
        "--audio-shape",
        default="tiny",
        choices=["tiny", "base"],
        help="tiny preset's audio features: tiny (3 x 32) or base (13 x 768, wav2vec2-base's; default tiny)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--audio-guidance", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--image", default=str(ASSETS / "portrait.jpg"), help="portrait (default: a shipped one)"
    )
    parser.add_argument(
        "--audio",
        default=str(ASSETS / "hdtf_speech_256_4s.mp4"),
        help="speech, looped to each length (any file with sound; default: a shipped 4 s clip's track)",
    )
    add_child_option(parser, type=float, metavar="SECONDS")  # the one audio length this child measures


def _run_one(args) -> dict:
    import numpy as np
    import soundfile as sf
    import torch

    from emo.generation.pipeline import EMOPipeline, GenerationOptions
    from emo.media import load_audio
    from emo.resources import peak_rss_mib

    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    speech = load_audio(args.audio)
    samples = int(args.child * 16000)
    looped = np.tile(speech, samples // speech.size + 1)[:samples]
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "audio.wav"
        sf.write(wav, looped, 16000)
        pipe = (
            EMOPipeline.from_weights(args.weights, device=args.device, dtype=dtype)
            if args.weights
            else EMOPipeline.tiny(args.device, dtype, audio_shape=args.audio_shape)
        )
        opts = GenerationOptions(
            steps=args.steps, size=args.size, audio_guidance=args.audio_guidance, max_duration=0
        )
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        result = pipe.generate(args.image, wav, Path(tmp) / "out.mp4", opts, progress=False)
        seconds = time.perf_counter() - start
    gpu = torch.cuda.max_memory_allocated() / 2**20 if args.device.startswith("cuda") else None
    proj = pipe.model.audio_projector.config
    # What the track's audio features take (F, L, D, float16 as generation holds them), against the peak RSS.
    features = result.frames * proj.num_layers * proj.feature_dim * torch.float16.itemsize / 2**20
    return {
        "seconds": seconds,
        "frames": result.frames,
        "peak_rss_mib": peak_rss_mib(),
        "peak_gpu_mib": gpu,
        "audio_features_mib": features,
        "audio_shape": [proj.num_layers, proj.feature_dim],
    }


def run(args) -> int:
    if args.child:
        print(json.dumps(_run_one(args)))
        return 0
    if args.weights and args.audio_shape != "tiny":
        raise EmoError("--audio-shape is for the tiny preset; a checkpoint's audio shape is its own")
    rows = []
    for length in [float(x) for x in args.lengths.split(",")]:
        argv = [
            "--child",
            str(length),
            "--size",
            str(args.size),
            "--steps",
            str(args.steps),
            "--device",
            args.device,
            "--dtype",
            args.dtype,
            "--threads",
            str(args.threads),
            "--image",
            args.image,
            "--audio",
            args.audio,
            "--audio-guidance",
            str(args.audio_guidance),
            "--audio-shape",
            args.audio_shape,
        ] + (["--weights", args.weights] if args.weights else [])
        rows.append((length, measure_in_child("generate", argv)))
    model = args.weights or "tiny preset (random)"
    layers, width = rows[0][1]["audio_shape"]
    print(
        f"{model}, {args.size}², {args.steps} steps, {args.device} {args.dtype}, {args.threads} threads, "
        f"audio features {layers} x {width} per frame"
    )
    for length, r in rows:
        gpu = f", peak GPU {r['peak_gpu_mib']:.0f} MiB" if r["peak_gpu_mib"] else ""
        print(
            f"  {length:6.1f} s audio: {r['frames']:5d} frames, {r['seconds']:7.1f} s, "
            f"{r['seconds'] / r['frames']:.3f} s/frame, peak RSS {r['peak_rss_mib']:.0f} MiB{gpu} "
            f"(audio features {r['audio_features_mib']:.0f} MiB)"
        )
    if len(rows) > 1:
        print(
            f"peak RSS ratio longest/shortest: {rows[-1][1]['peak_rss_mib'] / rows[0][1]['peak_rss_mib']:.2f}x"
        )
    return 0
