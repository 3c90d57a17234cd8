"""A synthetic preprocessed dataset whose latents and audio carry each frame's mouth opening (mouth tests)."""

from __future__ import annotations

import numpy as np
import torch
from safetensors.torch import save_file

from emo.conditioning.face.geometry import LIPS_OUTER
from emo.eval.mouth import EYES, LOWER_LIP, UPPER_LIP

SIZE = 128  # the crop the landmarks are in, pixels


def landmarks(openings: np.ndarray) -> np.ndarray:
    """(F,) openings -> (F, 478, 3) Face Mesh-like landmarks: eyes 40 px apart, the outer lips fixed, the inner
    lips `opening` x 40 px apart."""
    lm = np.full((len(openings), 478, 3), 64.0)
    lm[:, EYES[0], :2], lm[:, EYES[1], :2] = (44, 50), (84, 50)
    lm[:, list(LIPS_OUTER), 0] = np.linspace(52, 76, len(LIPS_OUTER))
    lm[:, list(LIPS_OUTER), 1] = np.where(np.arange(len(LIPS_OUTER)) % 2, 84, 96)
    lm[:, UPPER_LIP, :2] = (64, 88)
    lm[:, LOWER_LIP, 0], lm[:, LOWER_LIP, 1] = 64, 88 + 40 * openings
    return lm


def write_dataset(root, clips: int, seed: int, frames: int = 60) -> None:
    """A preprocessed dataset whose latents carry each frame's opening as a pattern at the mouth, in noise."""
    rng = np.random.default_rng(seed)
    for c in range(clips):
        clip = root / "videos" / f"v{c}" / f"v{c}_000"
        clip.mkdir(parents=True)
        opening = rng.uniform(0.0, 0.5, frames)
        found = np.ones(frames, bool)
        found[0] = False  # a frame without a face: left out
        np.savez(clip / "meta.npz", landmarks=landmarks(opening), face_found=found,
                 mask=np.zeros((SIZE, SIZE), bool))  # fmt: skip
        latents = rng.normal(0, 0.3, (frames, 4, 16, 16))
        latents[:, 0, 10:13, 6:10] += 4 * opening[:, None, None]  # the mouth box: x 6.5..9.5, y 10.5..12
        save_file({"latents": torch.from_numpy(latents).half()}, str(clip / "latents.safetensors"))


def add_audio(root, seed: int) -> None:
    """Give each clip of a `write_dataset` dataset (F, 4, 5) audio features that carry its openings, in noise."""
    from emo.training.mouth_reading import clip_openings, clips_of

    rng = np.random.default_rng(seed)
    for clip in clips_of(root):
        opening = np.nan_to_num(clip_openings(clip), nan=0.25)
        features = rng.normal(0, 1, (len(opening), 4, 5))
        features[:, :, 0] += 20 * opening[:, None]
        save_file({"features": torch.from_numpy(features).half()}, str(clip / "audio_features.safetensors"))
