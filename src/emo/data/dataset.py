"""Dataset readers for the three training stages (EMO paper Sec. 3.3 / 4.1; EMO.md §3).

- :class:`Stage1Dataset` — image stage: one target frame and a *different* random frame of the same
  clip as the reference, plus the clip's face-region mask. Every kept clip serves (audio or not).
- :class:`VideoClipDataset` — video stages 2 and 3: n + f contiguous frames (the first n are the
  motion frames), a reference frame (outside the window when the clip is long enough), the per-frame
  wav2vec2 features of the f current frames windowed ±m, the head rotation speeds windowed the same
  way, and the mask. Only clips with audio features serve.

Randomness comes from ``numpy.random.default_rng((seed, epoch, index))``, never from global state, so
item ``i`` is the same across runs and across any number of DataLoader workers; call ``set_epoch`` to
draw new references / windows each epoch (with ``persistent_workers=True`` the workers keep their own
copy of the dataset, so create the DataLoader per epoch or leave persistent workers off). Files are opened per item (no handles held), so the datasets
pickle into worker processes.
"""

from __future__ import annotations

import bisect
import logging
import os
from pathlib import Path

import cv2
import numpy as np
import torch
from safetensors import safe_open

from emo.conditioning.face import mouth_boxes
from emo.conditioning.windows import window_index
from emo.data.clips import AUDIO_FEATURES, LATENTS, META, read_frames
from emo.data.manifest import read_manifest
from emo.errors import EmoError

logger = logging.getLogger(__name__)


def _to_tensor(frames: np.ndarray, size: int | None) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, S, S) float32 in [-1, 1], resized if ``size`` is given."""
    if size is not None and frames.shape[1:3] != (size, size):
        frames = np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in frames])
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # (N, 3, H, W)
    return x.float() / 127.5 - 1.0


def _mask_tensor(mask: np.ndarray, size: int | None) -> torch.Tensor:
    """(S, S) uint8 {0,1} -> (1, H, W) float32 {0,1}."""
    if size is not None and mask.shape != (size, size):
        mask = cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST)
    return torch.from_numpy((mask > 0).astype(np.float32))[None]


class _ClipDataset(torch.utils.data.Dataset):
    def __init__(self, root: str | os.PathLike, size: int | None, seed: int, latents: bool = False):
        self.root = Path(root)
        self.size = size
        self.seed = int(seed)
        self.epoch = 0
        self.latents = latents

    def _check_latents(self, clips: list[dict]) -> None:
        """With ``latents``, items carry the cached latents instead of pixels: every clip needs them, at the
        frame size they were encoded at."""
        missing = [c["clip_id"] for c in clips if not c.get("has_latents")]
        if missing:
            raise EmoError(
                f"{len(missing)} clips of {self.root} have no cached latents (e.g. {missing[0]}); make "
                f"them with `emo preprocess --add-latents --out {self.root} --codec DIR|taef2`, or set "
                "data.latents: false"
            )
        sizes = {c["size"] for c in clips}
        if self.size is not None and sizes != {self.size}:
            raise EmoError(
                f"the latents of {self.root} were encoded at {sorted(sizes)}² frames, not data.size "
                f"{self.size}: set data.size to the dataset's size"
            )

    def _read_latents(self, clip: dict, indices: list[int]) -> torch.Tensor:
        """Cached latents of frames ``indices`` of a clip: (N, C, h, w) float32."""
        with safe_open(str(self.root / clip["path"] / LATENTS), framework="pt") as f:
            rows = f.get_slice("latents")
            return torch.stack([rows[i : i + 1][0] for i in indices]).float()

    def set_epoch(self, epoch: int) -> None:
        """Draw different references/windows in each epoch (item i of epoch e is still reproducible)."""
        self.epoch = int(epoch)

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng((self.seed, self.epoch, int(index)))

    def _meta(self, clip: dict, *fields: str) -> dict[str, np.ndarray]:
        with np.load(self.root / clip["path"] / META) as meta:  # npz members load lazily, one by one
            return {f: meta[f] for f in fields}

    def _mouth(self, meta: dict[str, np.ndarray], frames: list[int]) -> torch.Tensor:
        """(len(frames), 4) mouth boxes as fractions of the frame (for train.mouth_weight)."""
        return torch.from_numpy(mouth_boxes(meta["landmarks"][frames], meta["mask"].shape[-1]))


class Stage1Dataset(_ClipDataset):
    """Stage 1 (image) samples, one per frame of every clip.

    Item: ``dict(target=(3, H, W), reference=(3, H, W), mask=(1, H, W), mouth=(1, 4), clip_id=str)``; images are
    float32 in [-1, 1], the mask float32 in {0, 1}. The reference is a random other frame of the
    target's clip (the paper: "a random frame from the same video clip as reference").

    Args:
        root: dataset directory made by ``emo preprocess``.
        size: resize frames and mask to ``size``² (None: the dataset's size).
        seed: base seed; randomness is derived from (seed, epoch, index).
    """

    def __init__(
        self, root: str | os.PathLike, size: int | None = None, seed: int = 0, latents: bool = False
    ):
        super().__init__(root, size, seed, latents)
        self.clips = [c for c in read_manifest(root) if c["num_frames"] >= 2]
        if not self.clips:
            raise EmoError(
                f"no clip of 2+ frames in {root}; add videos with `emo preprocess VIDEOS... --out {root}`"
            )
        if latents:
            self._check_latents(self.clips)
        self._starts = np.cumsum([0] + [c["num_frames"] for c in self.clips]).tolist()

    def __len__(self) -> int:
        return self._starts[-1]

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(index)
        c = bisect.bisect_right(self._starts, index) - 1
        clip = self.clips[c]
        target = index - self._starts[c]
        other = int(self._rng(index).integers(clip["num_frames"] - 1))
        reference = other + (other >= target)  # uniform over the clip's other frames
        meta = self._meta(clip, "frame_offsets", "mask", "landmarks")
        if self.latents:
            latents = self._read_latents(clip, [target, reference])  # (2, C, h, w)
            return {
                "target_latent": latents[0],
                "reference_latent": latents[1],
                "mask": _mask_tensor(meta["mask"], self.size),
                "mouth": self._mouth(meta, [target]),
                "clip_id": clip["clip_id"],
            }
        frames = _to_tensor(
            read_frames(self.root / clip["path"], [target, reference], meta["frame_offsets"]), self.size
        )
        return {
            "target": frames[0],  # (3, H, W)
            "reference": frames[1],  # (3, H, W)
            "mask": _mask_tensor(meta["mask"], self.size),  # (1, H, W)
            "mouth": self._mouth(meta, [target]),  # (1, 4)
            "clip_id": clip["clip_id"],
        }


class VideoClipDataset(_ClipDataset):
    """Stage 2/3 (video) samples: windows of n motion + f current frames with audio and speed.

    Item: ``dict(frames=(n+f, 3, H, W), reference=(3, H, W), mask=(1, H, W), audio=(f, 2m+1, L, D),
    speed=(f, 2m+1), mouth=(f, 4), clip_id=str)``. ``mouth`` is each current frame's mouth box (fractions of the
    frame, :func:`emo.conditioning.face.mouth_boxes`). ``audio`` equals ``window(features_of_whole_clip, m)`` sliced to
    the f current frames (emo.conditioning.windows.window), so the ±m context of a window's edge frames
    comes from the real neighbouring frames, and only the clip's own ends are replicate-padded;
    ``speed`` (degrees per frame at the dataset fps) is windowed the same way.

    Each clip contributes ``1 + (F - (n+f)) // f`` items (about one per f new frames); an item's window
    start is drawn uniformly over the clip from (seed, epoch, index).

    Args:
        root: dataset directory made by ``emo preprocess`` (with audio features).
        num_motion_frames: n, frames before the current ones (paper: 4).
        num_frames: f, current frames (paper: 12).
        audio_window: m, neighbours on each side (paper: 2).
        size: resize frames and mask to ``size``² (None: the dataset's size).
        seed: base seed.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        num_motion_frames: int = 4,
        num_frames: int = 12,
        audio_window: int = 2,
        size: int | None = None,
        seed: int = 0,
        latents: bool = False,
    ):
        super().__init__(root, size, seed, latents)
        if num_motion_frames < 0 or num_frames < 1 or audio_window < 0:
            raise ValueError(
                f"need num_motion_frames >= 0, num_frames >= 1, audio_window >= 0; got "
                f"{num_motion_frames}, {num_frames}, {audio_window}"
            )
        self.n, self.f, self.m = num_motion_frames, num_frames, audio_window
        clips = read_manifest(root)
        length = self.n + self.f
        no_features = [c for c in clips if not c["has_audio_features"]]
        if no_features:
            logger.info(
                "%d of %d clips have no audio features (no audio, or features not computed): stage 1 only",
                len(no_features),
                len(clips),
            )
        short = [c for c in clips if c["has_audio_features"] and c["num_frames"] < length]
        if short:
            logger.info("%d clips are shorter than %d frames: skipped", len(short), length)
        self.clips = [c for c in clips if c["has_audio_features"] and c["num_frames"] >= length]
        if not self.clips:
            raise EmoError(
                f"no clip in {root} has audio features and >= {length} frames; compute the features with "
                f"`emo preprocess --add-audio-features --out {root} --audio-encoder WAV2VEC2_DIR`"
            )
        if latents:
            self._check_latents(self.clips)
        counts = [1 + (c["num_frames"] - length) // self.f for c in self.clips]
        self._starts = np.cumsum([0, *counts]).tolist()

    def __len__(self) -> int:
        return self._starts[-1]

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(index)
        clip = self.clips[bisect.bisect_right(self._starts, index) - 1]
        total = clip["num_frames"]
        length = self.n + self.f
        rng = self._rng(index)
        start = int(rng.integers(total - length + 1))
        window_frames = list(range(start, start + length))
        outside = total - length
        if outside > 0:  # a reference outside the window, so it is not a copy of a target frame
            r = int(rng.integers(outside))
            reference = r if r < start else r + length
        else:
            reference = int(rng.integers(total))

        meta = self._meta(clip, "frame_offsets", "mask", "speed", "landmarks")
        if self.latents:
            images = self._read_latents(clip, [*window_frames, reference])  # (n+f+1, C, h, w)
        else:
            images = _to_tensor(
                read_frames(self.root / clip["path"], [*window_frames, reference], meta["frame_offsets"]),
                self.size,
            )  # (n+f+1, 3, H, W)

        # Window of the current frames, replicate-padded at the clip ends only: index[t, j] is the frame
        # feeding position j of current frame t (same as temporal.window over the whole clip, sliced).
        current = torch.arange(start + self.n, start + length)  # (f,)
        index_map = window_index(current, total, self.m).numpy()  # (f, 2m+1)
        lo, hi = int(index_map.min()), int(index_map.max()) + 1
        with safe_open(str(self.root / clip["path"] / AUDIO_FEATURES), framework="pt") as f:
            features = f.get_slice("features")[lo:hi]  # (hi-lo, L, D), only the rows we need
        audio = features.float()[torch.from_numpy(index_map - lo)]  # (f, 2m+1, L, D)
        speed = torch.from_numpy(meta["speed"].astype(np.float32)[index_map])  # (f, 2m+1)
        pixels_or_latents = ("latents", "reference_latent") if self.latents else ("frames", "reference")
        return {
            pixels_or_latents[0]: images[:length],  # (n+f, 3, H, W) frames or (n+f, C, h, w) latents
            pixels_or_latents[1]: images[length],  # (3, H, W) or (C, h, w)
            "mask": _mask_tensor(meta["mask"], self.size),  # (1, H, W)
            "audio": audio,
            "speed": speed,
            "mouth": self._mouth(meta, window_frames[self.n :]),  # (f, 4) of the current frames
            "clip_id": clip["clip_id"],
        }
