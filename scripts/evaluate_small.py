"""What the trained `small` model learned, measured on the held-out clips it never trained on (issue 12).

    python scripts/evaluate_small.py WEIGHTS DATA_DIR OUT [--seconds 6] [--sampler ddim] [--steps 40] [--seed 0]
        [--audio-guidance S] [--audio-guidance-region frame|mouth] [--mouth-guidance M]

WEIGHTS: an `emo train export` folder. DATA_DIR: the preprocessed data of scripts/train_small.sh
(WORK_DIR/data/small), with val_known/ (the last 10 s of the three long clips: people the model knows, speech it
never heard) and val_unseen/ (three whole clips of people it never saw).

Each held-out clip is regenerated from its own first frame and its own audio, through the same
`EMOPipeline.generate` that `emo generate` runs (the portrait step is given the clip's 128² crop and face-region
mask, so the frames line up with the ground truth). Two controls sit beside the model's figures:

- **still**: the first frame held for the whole clip. PSNR/SSIM a model would get by not moving at all.
- **other audio**: each video's mouth scored against another clip's audio (`emo evaluate`'s control). A model
  that ignores the audio scores as well there as with its own. One draw per clip: on three 5 s clips it is
  noise (a stage-1 model, whose video is the same for any audio, scored 0.27 with its own audio, -0.05 here).
- **audio swap**: each clip generated a second time, the same portrait and noise, driven by the next clip's
  audio (B, tiled to the length). `gain` = ((r(video_A, A) - r(video_B, A)) + (r(video_B, B) - r(video_A, B))) / 2:
  how much better each video's mouth follows the audio that drove it than the other video's mouth does. Exactly
  0 for a model that ignores the audio, whatever the clips' own structure.

The real videos get the same lip-sync figures, as the ceiling. Writes into OUT:
`real/`, `generated/` and `still/` mp4s per group, `results.json`, `frames.png` (ground truth above generated),
`mouth.png` (mouth opening against speech-band loudness, generated beside real).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from emo.conditioning.face import FaceAnalyzer
from emo.conditioning.face.geometry import Box, mouth_boxes
from emo.conditioning.face.portrait import Portrait
from emo.data import manifest as mf
from emo.data.clips import AUDIO, META, read_frames, write_audio
from emo.eval.evaluate import EvalConfig, evaluate, find_pairs
from emo.eval.mouth import band_loudness, mouth_audio_correlation, mouth_opening
from emo.generation import AUDIO_GUIDANCE_REGIONS
from emo.generation.cli import model_options
from emo.generation.pipeline import EMOPipeline, GenerationOptions
from emo.media import iter_video_frames, load_audio, write_video

GROUPS = {"val_known": "known people, unheard speech", "val_unseen": "people never seen"}
REPORTED = ("psnr", "ssim", "mouth_audio_corr", "mouth_audio_corr_other_audio")


class HeldOutClip:
    """One preprocessed held-out clip, cut to its first ``seconds``."""

    def __init__(self, clip_dir: Path, fps: float, seconds: float):
        meta = np.load(clip_dir / META)
        offsets = meta["frame_offsets"]
        self.stem = clip_dir.name
        self.fps = fps
        n = min(len(offsets) - 1, int(round(seconds * fps)))
        self.frames = read_frames(clip_dir, range(n), offsets)  # (n, S, S, 3)
        self.mask = meta["mask"].astype(np.float32)
        self.mouth_box = mouth_boxes(meta["landmarks"][:1], self.frames.shape[1])[0]  # the first frame's
        self.speed = float(np.median(meta["speed"][:n]))
        audio = load_audio(clip_dir / AUDIO, sample_rate=16000)
        self.audio = audio[: int(round(n / fps * 16000))]

    def portrait(self) -> Portrait:
        size = self.frames.shape[1]
        return Portrait(self.frames[0], self.mask, None, 1, Box(0, 0, size, size), None, self.mouth_box)


def held_out_clips(data: Path, group: str, seconds: float) -> list[HeldOutClip]:
    root = data / group
    fps = float(mf.read_json(root / mf.DATASET_CONFIG)["fps"])
    dirs = sorted(p.parent for p in (root / mf.VIDEOS).glob(f"*/*/{META}"))
    if not dirs:
        sys.exit(f"evaluate_small: no preprocessed clips in {root}")
    return [HeldOutClip(d, fps, seconds) for d in dirs]


def generate(pipe: EMOPipeline, clip: HeldOutClip, out: Path, args, audio: np.ndarray | None = None) -> Path:
    """`clip` regenerated from its first frame, driven by its own audio or by `audio`."""
    audio_path = out.with_suffix(".wav")
    write_audio(audio_path, clip.audio if audio is None else audio)
    pipe.prepare_portrait = lambda image_path, opts: clip.portrait()  # the clip's own crop, aligned
    opts = GenerationOptions(
        steps=args.steps,
        sampler=args.sampler,
        speed=clip.speed,
        fps=clip.fps,
        size=clip.frames.shape[1],
        seed=args.seed,
        **args.model_set,
        mouth_guidance=args.mouth_guidance,
    )
    pipe.generate(audio_path, audio_path, out, opts, overwrite=True, progress=False)
    audio_path.unlink()
    return out


def metrics_of(generated: Path, reference: Path) -> tuple[dict, list[dict]]:
    evaluation = evaluate(find_pairs(generated, reference), EvalConfig(), progress=False)
    values = {m.name: m.value for m in evaluation.metrics if m.name in REPORTED}
    return values, evaluation.per_video


def mouth_series(frames: np.ndarray, audio: np.ndarray, fps: float) -> tuple[np.ndarray, np.ndarray]:
    with FaceAnalyzer() as analyzer:
        opening = mouth_opening(list(analyzer.analyze_video(list(frames))))
    return opening, band_loudness(audio, 16000, fps, len(opening))


def audio_swap(own: tuple[np.ndarray, np.ndarray], video_b: np.ndarray, b: np.ndarray, fps: float) -> dict:
    """The audio-swap control of one clip: video_a driven by audio a (`own`: its mouth_series), video_b by audio b
    (same portrait, noise)."""
    mouth_a, loud_a = own
    mouth_b, loud_b = mouth_series(video_b, b, fps)
    r = {  # r[video, audio]
        ("a", "a"): mouth_audio_correlation(mouth_a, loud_a)[0],
        ("b", "a"): mouth_audio_correlation(mouth_b, loud_a)[0],
        ("b", "b"): mouth_audio_correlation(mouth_b, loud_b)[0],
        ("a", "b"): mouth_audio_correlation(mouth_a, loud_b)[0],
    }
    return {
        "own_video_own_audio": r["a", "a"],
        "swapped_video_own_audio": r["b", "a"],
        "swapped_video_its_audio": r["b", "b"],
        "own_video_swapped_audio": r["a", "b"],
        "gain": ((r["a", "a"] - r["b", "a"]) + (r["b", "b"] - r["a", "b"])) / 2,
    }


def read_mp4(path: Path) -> np.ndarray:
    return np.stack(list(iter_video_frames(path)))


def frame_strip(rows: list[tuple[str, np.ndarray, np.ndarray]], path: Path, columns: int = 6) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2 * len(rows), 1, figsize=(columns * 1.3, 2 * len(rows) * 1.42))
    for r, (name, real, fake) in enumerate(rows):
        n = min(len(real), len(fake))
        picks = np.linspace(0, n - 1, columns).round().astype(int)
        for k, (label, frames) in enumerate((("real", real), ("generated", fake))):
            ax = axes[2 * r + k]
            ax.imshow(np.concatenate([frames[i] for i in picks], axis=1))
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_ylabel(label, fontsize=7)
            if k == 0:
                ax.set_title(name, fontsize=7, loc="left")
    fig.tight_layout(h_pad=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def mouth_plot(series: list[tuple[str, float, dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(series), 1, figsize=(9, 2.3 * len(series)), squeeze=False)
    for ax, (name, fps, s) in zip(axes[:, 0], series):
        t = np.arange(len(s["real"][0])) / fps
        loud = np.log(s["real"][1] + 1e-4)
        ax2 = ax.twinx()
        ax2.fill_between(t, loud.min(), loud, color="0.85", label="speech-band loudness (log)")
        ax2.set_yticks([])
        for label, colour in (("real", "tab:blue"), ("generated", "tab:red")):
            opening, loudness = s[label]
            r, lag = mouth_audio_correlation(opening, loudness)
            ax.plot(t[: len(opening)], opening, color=colour, label=f"{label} mouth opening (r={r:.2f})")
        ax.set_zorder(ax2.get_zorder() + 1)
        ax.patch.set_visible(False)
        ax.set_title(name, fontsize=8, loc="left")
        ax.set_ylabel("lip gap / eye dist.", fontsize=7)
        ax.legend(fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("weights", type=Path)
    parser.add_argument("data", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seconds", type=float, default=6.0, help="seconds of each held-out clip")
    parser.add_argument("--sampler", default="ddim", choices=["ddim", "dpm++"])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0, help="the noise of every clip (default 0)")
    parser.add_argument("--strength", type=float, help="default: the model's own (its generation.json)")
    parser.add_argument("--audio-guidance", type=float, help="default: the model's own, else 1.0 (off)")
    parser.add_argument(
        "--audio-guidance-region",
        choices=AUDIO_GUIDANCE_REGIONS,
        help="default: the model's own, else frame",
    )
    parser.add_argument(
        "--mouth-guidance",
        type=float,
        help="default: the model's mouth guide at full strength, if it has one",
    )
    args = parser.parse_args()

    pipe = EMOPipeline.from_weights(args.weights)
    # Resolved by emo generate's own rule: given, else the model's own (generation.json), else GenerationOptions'.
    # The size is each clip's own, so it is not taken from there.
    as_generate = argparse.Namespace(**vars(args), preset=None, model=None, size=None)
    args.model_set = {k: v for k, v in model_options(as_generate).items() if k != "size"}
    results: dict = {"weights": str(args.weights), "seconds": args.seconds, "sampler": args.sampler,
                     "steps": args.steps, "seed": args.seed, **args.model_set, "mouth_guidance": args.mouth_guidance,
                     "mouth_guide": pipe.mouth_guide is not None, "groups": {}}  # fmt: skip
    strip, plots = [], []
    for group, what in GROUPS.items():
        dirs = {k: args.out / k / group for k in ("real", "generated", "still", "swapped")}
        for d in dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        clips = held_out_clips(args.data, group, args.seconds)
        swaps = []
        for i, clip in enumerate(clips):
            name = f"{clip.stem}.mp4"
            write_video(dirs["real"] / name, clip.frames, clip.fps, audio=clip.audio, overwrite=True)
            still = np.repeat(clip.frames[:1], len(clip.frames), axis=0)
            write_video(dirs["still"] / name, still, clip.fps, audio=clip.audio, overwrite=True)
            generate(pipe, clip, dirs["generated"] / name, args)
            print(f"{group}/{clip.stem}: generated {len(clip.frames)} frames", file=sys.stderr)
            fake = read_mp4(dirs["generated"] / name)
            strip.append((f"{clip.stem} ({what})", clip.frames, fake))
            generated = mouth_series(fake, clip.audio, clip.fps)
            plots.append((clip.stem, clip.fps, {"real": mouth_series(clip.frames, clip.audio, clip.fps),
                                                "generated": generated}))  # fmt: skip
            other_audio = np.resize(clips[(i + 1) % len(clips)].audio, len(clip.audio))  # tiled when shorter
            swapped = read_mp4(generate(pipe, clip, dirs["swapped"] / name, args, audio=other_audio))
            swaps.append(audio_swap(generated, swapped, other_audio, clip.fps))
        generated, per_video = metrics_of(dirs["generated"], dirs["real"])
        real, _ = metrics_of(dirs["real"], dirs["real"])
        still, _ = metrics_of(dirs["still"], dirs["real"])
        results["groups"][group] = {
            "what": what,
            "clips": [c.stem for c in clips],
            "generated": generated,
            "real": {k: real.get(k) for k in ("mouth_audio_corr", "mouth_audio_corr_other_audio")},
            "still_control": {k: still.get(k) for k in ("psnr", "ssim")},
            "audio_swap": {
                **{k: float(np.mean([s[k] for s in swaps])) for k in swaps[0]},
                "per_video": swaps,
            },
            "per_video": per_video,
        }
        print(json.dumps({group: {k: v for k, v in results["groups"][group].items() if k != "per_video"}}))
    frame_strip(strip, args.out / "frames.png")
    mouth_plot(plots, args.out / "mouth.png")
    (args.out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
