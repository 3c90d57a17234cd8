"""Ways the mouth guide could set the lips, scored on the same generated videos (docs/small_model.md).

    python scripts/guide_variants_small.py MODEL_DIR DATA_DIR UNGUIDED [--seconds 10] [--out variants.json]

UNGUIDED: the OUT folder of `scripts/evaluate_small.py MODEL_DIR DATA_DIR UNGUIDED --mouth-guidance 0` run with
the same --seconds: its generated/ and swapped/ videos, made by the network alone. The guide works on finished
frames only (`EMOPipeline.decode`), so applying it here to those videos is what generation would have made,
except that the mouth reader reads latents re-encoded from the mp4 frames instead of the sampled ones.

Each variant is scored as evaluate_small scores a model: the audio-swap gain per clip, mouth_audio_corr with the
clip's own audio and with the next clip's, and the generated opening's jitter (mean |frame-to-frame change| over
its standard deviation; the real held-out videos: 0.41 known, 0.39 never seen).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from evaluate_small import GROUPS, audio_swap, held_out_clips, mouth_series, read_mp4  # noqa: E402

from emo.conditioning.mouth import mouth_crops, open_mouth  # noqa: E402
from emo.conditioning.windows import window  # noqa: E402
from emo.data.clips import write_audio  # noqa: E402
from emo.generation.pipeline import EMOPipeline, GenerationOptions  # noqa: E402

CLIP = 12  # frames per generated clip (the small model's f): what a streaming guide sees at once

# name -> (frames to average the asked-for openings over, how the generated mouth's opening is taken)
VARIANTS = {
    "shipped: each frame's reading": (1, "frame"),
    "asked-for openings averaged over 3 frames": (3, "frame"),
    "asked-for openings averaged over 5 frames": (5, "frame"),
    "readings averaged over 9 frames": (1, "smooth9"),
    "each clip's mean reading (12 frames)": (1, "clip"),
    "running mean reading (clips so far)": (1, "running"),
    "the whole video's mean reading": (1, "video"),
    "no reading (the training mean)": (1, "zero"),
}


def moving_average(x: torch.Tensor, k: int) -> torch.Tensor:
    if k <= 1:
        return x
    padded = torch.nn.functional.pad(x[None, None], (k // 2, k // 2), mode="replicate")[0, 0]
    return padded.unfold(0, k, 1).mean(-1)


def taken(readings: torch.Tensor, how: str) -> torch.Tensor:
    """The generated mouth's opening as a variant takes it from the mouth reader's per-frame readings."""
    if how == "frame":
        return readings
    if how == "smooth9":
        return moving_average(readings, 9)
    if how == "clip":
        return torch.cat([c.mean().expand(len(c)) for c in readings.split(CLIP)])
    if how == "running":
        clips = readings.split(CLIP)
        return torch.cat([readings[: (i + 1) * CLIP].mean().expand(len(c)) for i, c in enumerate(clips)])
    if how == "video":
        return readings.mean().expand(len(readings))
    return torch.zeros_like(readings)  # "zero"


class Video:
    """One unguided video with what every variant needs: the openings its audio asks for, and its readings."""

    def __init__(self, pipe: EMOPipeline, frames: np.ndarray, audio: np.ndarray, box: np.ndarray, fps: float):
        guide, n = pipe.mouth_guide, len(frames)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "audio.wav"
            write_audio(path, audio)
            _, features = pipe.prepare_audio(path, GenerationOptions(fps=fps, max_duration=0))
        self.frames = frames
        self.asked = guide.openings(window(features.float()[:n], guide.audio.half_window))
        self.images = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1
        with torch.no_grad():
            latents = torch.cat([pipe.codec.encode(self.images[i : i + 50]) for i in range(0, n, 50)])
        self.box = torch.from_numpy(box).float()
        self.readings = guide.reader.read(mouth_crops(latents.float(), self.box[None].expand(n, 4))).float()

    def guided(self, pipe: EMOPipeline, setting: tuple[int, str] | None) -> np.ndarray:
        """The video's frames with the lips set as ``setting`` (a VARIANTS value) says; None: as generated."""
        if setting is None:
            return self.frames
        smoothing, how = setting
        change = moving_average(self.asked, smoothing) - taken(self.readings, how)
        gaps = pipe.mouth_guide.gap_pixels(change, self.box, self.images.shape[-1])
        out = open_mouth(self.images, self.box, gaps)
        return ((out.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def jitter(opening: np.ndarray) -> float:
    return float(np.nanmean(np.abs(np.diff(opening))) / (np.nanstd(opening) + 1e-9))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("data", type=Path)
    parser.add_argument("unguided", type=Path, help="evaluate_small's OUT, run with --mouth-guidance 0")
    parser.add_argument("--seconds", type=float, default=10.0, help="as the unguided evaluation was run")
    parser.add_argument("--out", type=Path, help="also write the report here (JSON)")
    args = parser.parse_args()
    pipe = EMOPipeline.from_weights(args.model)
    if pipe.mouth_guide is None:
        sys.exit(f"guide_variants_small: {args.model} has no mouth guide (scripts/fit_mouth_guide.py)")
    report: dict = {"unguided": str(args.unguided), "seconds": args.seconds, "groups": {}}
    for group in GROUPS:
        clips = held_out_clips(args.data, group, args.seconds)
        pairs = []  # (own video, its audio, swapped video, the audio that drove it) per clip
        for i, clip in enumerate(clips):
            name = f"{clip.stem}.mp4"
            other = np.resize(clips[(i + 1) % len(clips)].audio, len(clip.audio))  # as evaluate_small
            own = read_mp4(args.unguided / "generated" / group / name)
            swapped = read_mp4(args.unguided / "swapped" / group / name)
            box, fps = clip.mouth_box, clip.fps
            pairs.append(
                (clip, Video(pipe, own, clip.audio, box, fps), Video(pipe, swapped, other, box, fps), other)
            )
        scores = {}
        for variant, setting in {"off (the network alone)": None, **VARIANTS}.items():
            per_clip = []
            for clip, own, swapped, other in pairs:
                series = mouth_series(own.guided(pipe, setting), clip.audio, clip.fps)
                swap = audio_swap(series, swapped.guided(pipe, setting), other, clip.fps)
                per_clip.append({**swap, "jitter": jitter(series[0])})
            scores[variant] = {
                "gain": float(np.mean([c["gain"] for c in per_clip])),
                "gain per clip": [round(c["gain"], 3) for c in per_clip],
                "own audio": float(np.mean([c["own_video_own_audio"] for c in per_clip])),
                "control: other clip's audio": float(
                    np.mean([c["own_video_swapped_audio"] for c in per_clip])
                ),
                "jitter": float(np.mean([c["jitter"] for c in per_clip])),
            }
            shown = {k: v if isinstance(v, list) else round(v, 3) for k, v in scores[variant].items()}
            print(group, variant, json.dumps(shown), flush=True)
        report["groups"][group] = scores
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
