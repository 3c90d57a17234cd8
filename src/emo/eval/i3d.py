"""I3D video features for FVD, the StyleGAN-V protocol (Skorokhodov et al. 2022).

StyleGAN-V computes FVD with ``i3d_torchscript.pt``: the Kinetics-400 I3D of the TensorFlow FVD
implementation (the tf.hub model, whose weights differ from the released kinetics-i3d ones), exported
as TorchScript. It is called on uint8 videos ``(B, 3, T, H, W)`` with
``rescale=True, resize=True, return_features=True`` and returns the 400 logits before the softmax.
Clips are 16 consecutive frames (``fvd2048_16f``). That file is the standard, so it is the one we take;
the pytorch-i3d ``rgb_imagenet.pt`` weights would give other features, so we do not accept them under
the name FVD.

Loading safely: a TorchScript archive is not a pickle of Python objects. ``torch.jit.load`` rebuilds
the module from TorchScript code and tensors with TorchScript's own restricted deserializer: it cannot
import or call arbitrary Python. The code in the archive does run inside the TorchScript interpreter,
so only give a file from a source you trust (StyleGAN-V's release). We check that the file is a zip
archive with TorchScript's ``code/`` and ``constants.pkl`` entries before handing it to torch, load it
on the CPU, and switch it to eval mode.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import numpy as np
import torch

from emo.errors import EmoError
from emo.eval.metrics import Entry, FrechetMetric, Video

logger = logging.getLogger(__name__)

FLAG = "--i3d"
WEIGHTS_NAME = "i3d_torchscript.pt"
CLIP_FRAMES = 16


def load_i3d(path) -> torch.jit.ScriptModule:
    """StyleGAN-V's ``i3d_torchscript.pt`` -> TorchScript module (see the module docstring on safety)."""
    path = Path(path)
    if not path.is_file():
        raise EmoError(f"{FLAG} {path}: no such file; give the path of i3d_torchscript.pt")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        raise EmoError(
            f"{FLAG} {path}: not a TorchScript archive (expected StyleGAN-V's i3d_torchscript.pt)"
        ) from None
    if not any("/code/" in n or n.startswith("code/") for n in names) or not any(
        n.endswith("constants.pkl") for n in names
    ):
        raise EmoError(f"{FLAG} {path}: a zip file but not a TorchScript archive (no code/ or constants.pkl)")
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise EmoError(
            f"{FLAG} {path}: torch.jit.load failed ({str(exc).strip().splitlines()[0][:160]})"
        ) from None
    return module.eval()


def video_clips(frames: list[np.ndarray], clip_frames: int = CLIP_FRAMES) -> list[np.ndarray]:
    """Non-overlapping clips of ``clip_frames`` consecutive frames, each (T, H, W, 3); a short tail is dropped."""
    return [
        np.stack(frames[s : s + clip_frames]) for s in range(0, len(frames) - clip_frames + 1, clip_frames)
    ]


@torch.no_grad()
def i3d_features(detector, clips: list[np.ndarray], batch_size: int = 4) -> np.ndarray:
    """Clips (T, H, W, 3) uint8 -> (N, D) features, called exactly as StyleGAN-V calls the detector."""
    out = []
    for start in range(0, len(clips), batch_size):
        videos = torch.from_numpy(np.stack(clips[start : start + batch_size])).permute(
            0, 4, 1, 2, 3
        )  # (B, 3, T, H, W)
        features = detector(videos.contiguous(), rescale=True, resize=True, return_features=True)
        out.append(features.double().numpy())
    return np.concatenate(out) if out else np.zeros((0, 400))


class FVD(FrechetMetric):
    """FVD: I3D features of consecutive 16-frame clips, generated vs ground truth."""

    entries = (Entry("fvd", "FVD", "lower"),)
    flag, weights_name, stage = FLAG, WEIGHTS_NAME, "fvd"

    def load_network(self, path):
        return load_i3d(path)

    def update(self, video: Video, row: dict) -> None:
        stem = video.pair.stem
        if abs(video.gen_fps - video.ref_fps) > 1e-3 * video.ref_fps:
            # FVD takes 16 consecutive frames on each side: at other rates they span other durations.
            logger.warning(
                "%s: generated at %.4g fps, ground truth at %.4g fps; FVD's 16-frame clips then cover "
                "different durations (generate at the ground truth's frame rate)",
                stem, video.gen_fps, video.ref_fps,
            )  # fmt: skip
            self.notes.append(f"{stem}: {video.gen_fps:.4g} fps vs ground truth {video.ref_fps:.4g}")
        for frames, features in ((video.gen, self.gen_features), (video.ref, self.ref_features)):
            clips = video_clips(frames)
            if clips:
                features.append(self.timed("fvd", i3d_features, self.net, clips))
            else:
                self.notes.append(f"{stem}: shorter than {CLIP_FRAMES} frames")
