"""Turn folders of raw talking-head videos into an EMO training dataset (EMO.md §4).

  emo preprocess VIDEOS... --out DIR [--workers N] [--shard i/N] [--audio-encoder WAV2VEC2_DIR|log-mel]
                 [--codec VAE_DIR|taef2]
  emo preprocess --merge --out DIR                                  rebuild manifest + summary (after shards)
  emo preprocess --add-audio-features --out DIR --audio-encoder WAV2VEC2_DIR|log-mel [--device cuda] [--shard i/N]
  emo preprocess --add-latents --out DIR --codec VAE_DIR|taef2     the latent cache (training never re-encodes)

VIDEOS are video files, folders (searched recursively) or .txt files listing one path per line.
Each video is split at scene cuts into 3-12 s clips; clips with no face, several faces, a face too
small or too much camera motion are dropped (the reason is recorded); each kept clip gets one fixed
square crop around the face, resized to 512² at 30 fps, with 16 kHz mono audio, per-frame face boxes,
landmarks, head pose and rotation speed, and the face-region mask.

Output: DIR/manifest.jsonl (one line per clip), DIR/summary.json (kept / dropped per reason, hours),
DIR/videos/<video>/<clip>/ (frames.mjpeg, meta.npz, audio.wav, audio_features.safetensors,
latents.safetensors).

A rerun skips finished videos (also after a crash or kill -9); a video that cannot be read, or that
crashes its worker process, is recorded as failed (--retry-failed tries again) and the others continue.
DIR/dataset.json records the settings, the --audio-encoder and the --codec: a rerun must use the same. On a cluster, run one job per shard (--shard 0/8 ...
--shard 7/8, same inputs and --out); the last one to finish writes the merged manifest, or run
--merge afterwards.
"""

from __future__ import annotations

import json

HELP = "raw talking-head videos -> training dataset (scene cuts, face crops, audio, manifest)"


def add_arguments(parser) -> None:
    from emo.data.dataset_config import PreprocessConfig
    from emo.data.scenes import DETECTORS, SceneConfig

    d, s = PreprocessConfig(), SceneConfig()
    parser.add_argument(
        "inputs", nargs="*", metavar="VIDEOS", help="video files, folders, or .txt lists of paths"
    )
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="dataset directory (created; resumed if it exists)"
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--merge",
        action="store_true",
        help="only rebuild DIR/manifest.jsonl and summary.json from finished videos",
    )
    mode.add_argument(
        "--add-audio-features",
        action="store_true",
        help="compute audio features for clips that lack them (needs --audio-encoder)",
    )
    mode.add_argument(
        "--add-latents",
        action="store_true",
        help="encode the frames of clips that lack latents (needs --codec)",
    )
    run = parser.add_argument_group("running")
    run.add_argument(
        "--workers", type=int, default=1, metavar="N", help="processes on this machine (default 1)"
    )
    run.add_argument(
        "--shard", metavar="i/N", help="process only shard i of N (0-based) of the sorted video list"
    )
    run.add_argument(
        "--audio-encoder",
        metavar="DIR|log-mel",
        help="local wav2vec2 folder, or log-mel (weight-free); also store per-frame audio features",
    )
    run.add_argument(
        "--codec",
        metavar="DIR|taef2",
        help="latent codec (SD VAE folder, tiny-autoencoder folder, or taef2: the shipped one); also "
        "store every frame's latents, so training never re-encodes frames",
    )
    run.add_argument(
        "--device", default="cpu", help="where wav2vec2 / the codec run (cpu, cuda, cuda:1...; default cpu)"
    )
    run.add_argument("--retry-failed", action="store_true", help="process again videos recorded as failed")
    out = parser.add_argument_group("output")
    out.add_argument("--fps", type=float, default=d.fps, help=f"output frame rate (default {d.fps:g})")
    out.add_argument(
        "--size", type=int, default=d.size, help=f"output frames are SIZE x SIZE (default {d.size})"
    )
    out.add_argument(
        "--min-clip",
        type=float,
        default=d.min_clip_s,
        metavar="S",
        help=f"shortest clip, seconds (default {d.min_clip_s:g})",
    )
    out.add_argument(
        "--max-clip",
        type=float,
        default=d.max_clip_s,
        metavar="S",
        help=f"longest clip, seconds (default {d.max_clip_s:g})",
    )
    out.add_argument(
        "--crop-expand",
        type=float,
        default=d.crop_expand,
        help=f"crop side / size of the union of the clip's face boxes (default {d.crop_expand:g})",
    )
    out.add_argument(
        "--jpeg-quality",
        type=int,
        default=d.jpeg_quality,
        help=f"stored frame quality (default {d.jpeg_quality})",
    )
    flt = parser.add_argument_group("clip filters (a dropped clip is recorded with its reason)")
    flt.add_argument(
        "--min-face-px",
        type=float,
        default=d.min_face_px,
        help=f"face_too_small below this median face height in source pixels (default {d.min_face_px:g})",
    )
    flt.add_argument(
        "--min-face-presence",
        type=float,
        default=d.min_face_presence,
        help=f"no_face when fewer sampled frames show a face (default {d.min_face_presence:g})",
    )
    flt.add_argument(
        "--multi-face-ratio",
        type=float,
        default=d.multi_face_ratio,
        help=f"a 2nd face counts if at least this fraction of the main face's height (default {d.multi_face_ratio:g})",
    )
    flt.add_argument(
        "--max-multi-face",
        type=float,
        default=d.max_multi_face_frac,
        help=f"multiple_faces when more sampled frames than this show 2+ faces (default {d.max_multi_face_frac:g})",
    )
    flt.add_argument(
        "--max-camera-motion",
        type=float,
        default=d.max_camera_motion,
        help=f"camera_motion above this median background speed, frame widths/s (default {d.max_camera_motion:g})",
    )
    flt.add_argument(
        "--min-landmark-frac",
        type=float,
        default=d.min_landmark_frac,
        help=f"face_lost when face mesh finds the face in fewer cropped frames (default {d.min_landmark_frac:g})",
    )
    flt.add_argument(
        "--analysis-fps",
        type=float,
        default=d.analysis_fps,
        help=f"face/camera checks per second of video (default {d.analysis_fps:g})",
    )
    sc = parser.add_argument_group("scene cuts (PySceneDetect)")
    sc.add_argument("--scene-detector", choices=DETECTORS, default=s.detector, help=f"(default {s.detector})")
    sc.add_argument(
        "--scene-threshold",
        type=float,
        default=s.threshold,
        help=f"adaptive: change ratio; content: HSV delta, try 27 (default {s.threshold:g})",
    )
    sc.add_argument(
        "--min-scene",
        type=float,
        default=s.min_scene_s,
        metavar="S",
        help=f"no two cuts closer (default {s.min_scene_s:g})",
    )


def config_from_args(args):
    from emo.data.dataset_config import PreprocessConfig
    from emo.data.scenes import SceneConfig

    return PreprocessConfig(
        fps=args.fps,
        size=args.size,
        min_clip_s=args.min_clip,
        max_clip_s=args.max_clip,
        scene=SceneConfig(
            detector=args.scene_detector, threshold=args.scene_threshold, min_scene_s=args.min_scene
        ),
        analysis_fps=args.analysis_fps,
        min_face_px=args.min_face_px,
        min_face_presence=args.min_face_presence,
        multi_face_ratio=args.multi_face_ratio,
        max_multi_face_frac=args.max_multi_face,
        max_camera_motion=args.max_camera_motion,
        crop_expand=args.crop_expand,
        min_landmark_frac=args.min_landmark_frac,
        jpeg_quality=args.jpeg_quality,
    )


def run(args) -> int:
    from pathlib import Path

    from emo.data import latents, manifest, preprocess
    from emo.errors import EmoError

    if args.merge or args.add_audio_features or args.add_latents:
        if args.inputs:
            raise EmoError("--merge / --add-audio-features / --add-latents take no VIDEOS, only --out DIR")
        if not (Path(args.out) / manifest.DATASET_CONFIG).is_file():
            raise EmoError(
                f"{args.out} is not a dataset made by emo preprocess (no {manifest.DATASET_CONFIG})"
            )
        if args.merge:
            summary = manifest.build_manifest(args.out)
        elif args.add_latents:
            if not args.codec:
                raise EmoError("--add-latents needs --codec DIR|taef2")
            summary = latents.add_latents(args.out, args.codec, shard=args.shard, device=args.device)
        else:
            if not args.audio_encoder:
                raise EmoError("--add-audio-features needs --audio-encoder WAV2VEC2_DIR|log-mel")
            summary = preprocess.add_audio_features(
                args.out, args.audio_encoder, shard=args.shard, device=args.device
            )
    else:
        if not args.inputs:
            raise EmoError("give VIDEOS (files, folders or .txt lists), or --merge / --add-audio-features")
        if args.workers < 1:
            raise EmoError(f"--workers must be >= 1, got {args.workers}")
        summary = preprocess.run_preprocess(
            args.inputs,
            args.out,
            config_from_args(args),
            workers=args.workers,
            shard=args.shard,
            audio_encoder=args.audio_encoder,
            retry_failed=args.retry_failed,
            device=args.device,
        )
        if args.codec:
            summary = latents.add_latents(args.out, args.codec, shard=args.shard, device=args.device)
    print(json.dumps(summary, indent=1))
    if summary["shards_missing"]:
        print(f"note: shards not finished yet: {', '.join(summary['shards_missing'])}")
    return 0
