"""`emo bench audio`: wav2vec2 feature extraction speed (× real time) and peak memory vs audio length.

The model is a randomly initialised ``Wav2Vec2Model`` with ``Wav2Vec2Config()`` defaults, i.e. exactly
wav2vec2-base's shape (12 layers, 768 wide, 95 M parameters): speed and memory do not depend on the weight
values. The input is a synthetic speech-like track (harmonic tones with a syllable-rate envelope, plus
noise). Each length runs in a fresh process (``--child MODE SECONDS``) so that its peak RSS is its own.

Two ways of consuming the features are measured:

- ``frames``: :meth:`AudioEncoder.frame_features` at the video frame rate, the whole (F, 13, 768) result
  kept in memory in float16 (what generation does); its output alone grows with the track (20 kB per frame);
- ``stream``: :meth:`AudioEncoder.iter_encode`, each 50 Hz chunk dropped after use (what a consumer that
  writes to disk sees): the working memory of the encoder itself.
"""

from __future__ import annotations

import json
import time

from emo.bench.child import add_child_option, measure_in_child

HELP = "wav2vec2-base-shaped audio features: × real time on CPU, peak memory for 1- vs 10-minute tracks"


def add_arguments(parser) -> None:
    parser.add_argument("--lengths", default="60,600", help="track lengths in seconds (default 60,600)")
    parser.add_argument("--modes", default="frames,stream", help="frames and/or stream (default both)")
    parser.add_argument("--fps", type=float, default=25.0, help="video frame rate for `frames` (default 25)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument(
        "--chunk-seconds", type=float, default=None, help="override the encoder's chunk length"
    )
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="model dtype")
    add_child_option(parser, nargs=2, metavar=("MODE", "SECONDS"))  # the one run this child measures


def synthetic_speech(seconds: float, sample_rate: int = 16000, seed: int = 0):
    """Speech-like test signal: a wandering 100-250 Hz voice with harmonics, gated at ~4 syllables/s."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n = int(seconds * sample_rate)
    out = np.empty(n, dtype=np.float32)
    block = 10 * sample_rate  # float64 work in 10 s blocks: the generator must not dominate peak memory
    for start in range(0, n, block):
        t = np.arange(start, min(n, start + block), dtype=np.float64) / sample_rate
        # Phase of a pitch 170 + 60 sin(2π 0.3 t) Hz, integrated in closed form (continuous across blocks).
        phase = 2 * np.pi * (170 * t - 60 / (2 * np.pi * 0.3) * np.cos(2 * np.pi * 0.3 * t))
        voice = sum(np.sin(k * phase) / k for k in range(1, 6))
        envelope = np.clip(np.sin(2 * np.pi * 4 * t), 0, None) ** 0.5
        out[start : start + len(t)] = 0.2 * voice * envelope + 0.01 * rng.standard_normal(len(t))
    return out


def _cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _measure(mode: str, seconds: float, args) -> dict:
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    from emo.conditioning.audio_features import AudioEncoder, ChunkConfig
    from emo.resources import peak_rss_mib

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    chunk = ChunkConfig() if args.chunk_seconds is None else ChunkConfig(chunk_seconds=args.chunk_seconds)
    model = Wav2Vec2Model(Wav2Vec2Config()).to(getattr(torch, args.dtype))
    encoder = AudioEncoder(model, chunk=chunk)
    waveform = synthetic_speech(seconds)
    baseline = peak_rss_mib()
    cpu_start = _cpu_seconds()
    start = time.perf_counter()
    if mode == "frames":
        features = encoder.frame_features(waveform, args.fps, dtype=torch.float16)  # as generation keeps them
        output_mib = features.numel() * features.element_size() / 2**20
    else:
        frames = 0
        for _, features in encoder.iter_encode(waveform):
            frames += features.shape[0]
        output_mib = 0.0
    elapsed = time.perf_counter() - start
    cpu = _cpu_seconds() - cpu_start
    return {
        "mode": mode,
        "seconds": seconds,
        "elapsed_s": round(elapsed, 2),
        "x_realtime": round(seconds / elapsed, 2),
        "cpu_s": round(cpu, 2),
        # What the wall time would be with `threads` cores to ourselves (the machine may be shared).
        "x_realtime_cpu": round(seconds / (cpu / args.threads), 2),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "rss_before_mib": round(baseline, 1),
        "output_mib": round(output_mib, 1),
        "chunk_s": chunk.chunk_seconds,
        "context_s": chunk.context_seconds,
        "threads": args.threads,
        "dtype": args.dtype,
    }


def run(args) -> int:
    if args.child:
        print(json.dumps(_measure(args.child[0], float(args.child[1]), args)))
        return 0
    lengths = [float(v) for v in args.lengths.split(",")]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    results = []
    for mode in modes:
        for seconds in lengths:
            command = ["--child", mode, str(seconds)]
            command += ["--threads", str(args.threads), "--fps", str(args.fps), "--dtype", args.dtype]
            if args.chunk_seconds is not None:
                command += ["--chunk-seconds", str(args.chunk_seconds)]
            result = measure_in_child("audio", command)
            results.append(result)
            print(
                f"{mode:6s} {seconds:7.0f} s audio: {result['elapsed_s']:7.2f} s = {result['x_realtime']:6.2f}× real time "
                f"({result['x_realtime_cpu']:.2f}× from CPU time on {args.threads} cores), "
                f"peak RSS {result['peak_rss_mib']:7.1f} MiB (before encoding {result['rss_before_mib']:.1f}, "
                f"output {result['output_mib']:.1f})"
            )
    for mode in modes:
        peaks = [r["peak_rss_mib"] for r in results if r["mode"] == mode]
        if len(peaks) >= 2:
            print(
                f"{mode}: peak RSS {lengths[-1]:.0f} s / {lengths[0]:.0f} s = {peaks[-1] / peaks[0]:.2f} (target ≤ 1.5)"
            )
    print(json.dumps({"bench": "audio", "results": results}))
    return 0
