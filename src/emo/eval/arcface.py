"""ArcFace identity embeddings for F-SIM (face similarity to the reference image).

Network: insightface's ``arcface_torch`` iResNet (``iresnet100`` or ``iresnet50``), the layout of its
released ``backbone.pth`` files (a plain state dict). Input: a 112×112 face aligned by a similarity
transform of five landmarks (eye centres, nose tip, mouth corners) onto insightface's ``arcface_dst``
template, RGB scaled to [-1, 1]. Our five points come from the Face Mesh landmarks (insightface uses
its RetinaFace detector's keypoints).

F-SIM = mean over frames of the cosine similarity between the reference image's embedding and each
generated frame's, × 100 (the scale of EMO's Table 1).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import nn

from emo.conditioning.face import FaceAnalyzer
from emo.errors import EmoError
from emo.eval.metrics import Entry, Metric, Video, mean
from emo.eval.weights import load_into, read_state_dict
from emo.media import load_image

FLAG = "--arcface"
WEIGHTS_NAME = "backbone.pth"
# insightface's arcface_dst: where the five points sit in a 112×112 aligned face.
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)
DEPTHS = {"iresnet50": (3, 4, 14, 3), "iresnet100": (3, 13, 30, 3)}


class IBasicBlock(nn.Module):
    """Pre-activation-style residual block of iResNet: BN → conv → BN → PReLU → conv(stride) → BN."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample = downsample

    def forward(self, x):
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (x if self.downsample is None else self.downsample(x))


class IResNet(nn.Module):
    """iResNet for 112×112 faces -> 512-d embedding."""

    def __init__(self, depths: tuple[int, int, int, int] = DEPTHS["iresnet100"], num_features: int = 512):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
        self.prelu = nn.PReLU(64)
        inplanes = 64
        for index, (planes, blocks) in enumerate(zip((64, 128, 256, 512), depths, strict=True), start=1):
            downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, 2, bias=False), nn.BatchNorm2d(planes, eps=1e-5)
            )
            layers = [IBasicBlock(inplanes, planes, 2, downsample)]
            layers += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
            setattr(self, f"layer{index}", nn.Sequential(*layers))
            inplanes = planes
        self.bn2 = nn.BatchNorm2d(512, eps=1e-5)
        self.dropout = nn.Dropout(p=0.0)
        self.fc = nn.Linear(512 * 7 * 7, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 112, 112) RGB in [-1, 1] -> (B, 512)."""
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, 512, 7, 7)
        x = self.dropout(self.bn2(x).flatten(1))
        return self.features(self.fc(x))


def load_arcface(path) -> IResNet:
    """An insightface ``backbone.pth`` (iresnet100, iresnet50, ...: the depth is read from the key names)."""
    state = read_state_dict(path, FLAG)
    # Blocks per stage, read from the key names (layer3.29.conv1.weight -> 30 blocks in stage 3).
    depths = tuple(len({k.split(".")[1] for k in state if k.startswith(f"layer{i}.")}) for i in range(1, 5))
    if min(depths) == 0:
        raise EmoError(
            f"{FLAG} {path}: no layer1..layer4 weights; expected an insightface iresnet backbone.pth"
        )
    model = IResNet(depths)
    load_into(model, state, path, FLAG)
    return model


def five_points(landmarks: np.ndarray) -> np.ndarray:
    """Face Mesh (478, ≥2) pixels -> (5, 2): image-left eye, image-right eye, nose tip, left/right mouth corner."""
    lm = np.asarray(landmarks, dtype=np.float64)[:, :2]
    eyes = sorted([lm[468], lm[473]], key=lambda p: p[0])  # iris centres
    mouth = sorted([lm[61], lm[291]], key=lambda p: p[0])  # mouth corners
    return np.stack([eyes[0], eyes[1], lm[1], mouth[0], mouth[1]])


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (Umeyama 1991) mapping src (N, 2) onto dst (N, 2), as a (2, 3) matrix."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(d.T @ s / len(src))
    sign = np.diag([1.0, np.sign(np.linalg.det(u @ vt))])
    rot = u @ sign @ vt
    scale = np.trace(np.diag(sig) @ sign) / s.var(0).sum()
    return np.hstack([scale * rot, (mu_d - scale * rot @ mu_s)[:, None]])


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """RGB image + Face Mesh landmarks -> (size, size, 3) aligned face (ArcFace template)."""
    matrix = similarity_transform(five_points(landmarks), ARCFACE_TEMPLATE * size / 112)
    return cv2.warpAffine(np.ascontiguousarray(image), matrix, (size, size), borderValue=0.0)


@torch.no_grad()
def embed(model: IResNet, faces: list[np.ndarray], batch_size: int = 32) -> np.ndarray:
    """Aligned 112×112 RGB uint8 faces -> (N, 512) L2-normalised embeddings."""
    out = []
    for start in range(0, len(faces), batch_size):
        x = torch.from_numpy(np.stack(faces[start : start + batch_size])).permute(0, 3, 1, 2).float()
        e = model((x / 255.0 - 0.5) / 0.5)
        out.append(torch.nn.functional.normalize(e, dim=1).numpy())
    return np.concatenate(out) if out else np.zeros((0, 512))


def fsim(model: IResNet, reference: np.ndarray, faces: list[np.ndarray]) -> float:
    """F-SIM of aligned faces against an aligned reference face: mean cosine similarity × 100."""
    embeddings = embed(model, [reference, *faces])
    cosine = np.clip(embeddings[1:] @ embeddings[0], -1.0, 1.0)  # round-off can pass 1
    return float(np.mean(cosine) * 100.0)


class FSIM(Metric):
    """F-SIM: ArcFace cosine × 100 between the reference portrait and each video's faces.

    EMO.md §6: for F-SIM "closer to ground truth is better" (a still face would score near 100), so the
    ground truth's own F-SIM against the same portrait is reported next to it.
    """

    entries = (Entry("fsim", "F-SIM", "closer", closer_to="reference_fsim"),
               Entry("reference_fsim", "F-SIM, ground truth", ""))  # fmt: skip
    flag, weights_name = FLAG, WEIGHTS_NAME

    def __init__(self, config, timed):
        super().__init__(config, timed)
        self.values, self.reference_values = [], []  # per video, generated and ground truth
        self.still_analyzer = None  # Face Mesh for the reference portraits

    def load(self) -> None:
        super().load()
        if self.available:
            self.still_analyzer = FaceAnalyzer()

    def load_network(self, path):
        return load_arcface(path)

    def close(self) -> None:
        if self.still_analyzer is not None:
            self.still_analyzer.close()

    def update(self, video: Video, row: dict) -> None:
        value, value_ref = self.timed("fsim", self._fsim, video)
        if value is not None:
            self.values.append(value)
            row["fsim"] = value
        if value_ref is not None:
            self.reference_values.append(value_ref)
            row["reference_fsim"] = value_ref

    def _fsim(self, video: Video) -> tuple[float | None, float | None]:
        """(F-SIM of the generated video, F-SIM of the ground truth), both against the same reference image."""
        pair, stride = video.pair, self.config.frame_stride
        if pair.image is not None:
            image = load_image(pair.image)
            ref_obs = self.still_analyzer.analyze(image)
        else:
            image, ref_obs = video.ref[0], video.obs_ref[0]
        if ref_obs is None:
            self.notes.append(f"{pair.stem}: no face in the reference")
            return None, None
        reference = align_face(image, ref_obs.landmarks)
        values = []
        for frames, obs, who in ((video.gen, video.obs_gen, "generated"),
                                 (video.ref, video.obs_ref, "ground-truth")):  # fmt: skip
            faces = [align_face(f, o.landmarks)
                     for f, o in zip(frames[::stride], obs[::stride], strict=True) if o is not None]  # fmt: skip
            if not faces:
                self.notes.append(f"{pair.stem}: no face in the {who} video")
            values.append(fsim(self.net, reference, faces) if faces else None)
        return values[0], values[1]

    def compute(self) -> list[tuple[float | None, str]]:
        return [
            (mean(self.values), "mean cosine × 100; closer to the ground truth's F-SIM is better"),
            (mean(self.reference_values), "the ground-truth videos against the same reference image"),
        ]
