"""Expression features: Deep3DFaceRecon's 3DMM coefficients (E-FID) and a landmark proxy (no weights).

E-FID (EMO paper Sec. 4.3) is the Fréchet distance between the 3DMM expression coefficients of
generated and ground-truth frames. The coefficients come from Deep3DFaceRecon_pytorch's regressor
(``ReconNetWrapper('resnet50')``: a ResNet-50 without its classifier + seven 1×1 convolution heads
giving 80 identity, **64 expression**, 80 texture, 3 angle, 27 lighting, 2 + 1 translation = 257
values), loaded from ``checkpoints/<name>/epoch_20.pth`` where the weights sit under ``net_recon``.
Input: a 224×224 RGB face in [0, 1]. Deep3DFaceRecon aligns with five detector keypoints and a
perspective fit to the BFM landmarks (``align_img``); we align the Face Mesh five points by a
similarity onto the ArcFace template scaled to 224 and widened (:data:`DEEP3D_MARGIN`) — close to,
but not bit-identical with, its crop.

``landmark_expression`` is a proxy under its own name (``lmk_expr_fd``): pose-normalised mouth, eye
and brow measurements from the 478-point Face Mesh.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import nn

from emo.eval.arcface import ARCFACE_TEMPLATE, five_points, similarity_transform
from emo.eval.metrics import Entry, FrechetMetric, Video
from emo.eval.weights import load_into, read_state_dict

FLAG = "--deep3d"
WEIGHTS_NAME = "epoch_20.pth"
HEADS = (80, 64, 80, 3, 27, 2, 1)  # id, exp, tex, angle, gamma, (tx, ty), tz
EXPRESSION = slice(80, 144)
DEEP3D_MARGIN = 1.35  # the Deep3D crop shows more of the head than ArcFace's tight 112 crop


class Bottleneck(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet50Trunk(nn.Module):
    """torchvision-layout ResNet-50 up to the global average pool (no ``fc``)."""

    def __init__(self, depths: tuple[int, ...] = (3, 4, 6, 3)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        inplanes = 64
        for index, (planes, blocks) in enumerate(zip((64, 128, 256, 512), depths, strict=True), start=1):
            stride = 1 if index == 1 else 2
            downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4)
            )
            layers = [Bottleneck(inplanes, planes, stride, downsample)]
            layers += [Bottleneck(planes * 4, planes) for _ in range(1, blocks)]
            setattr(self, f"layer{index}", nn.Sequential(*layers))
            inplanes = planes * 4

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return nn.functional.adaptive_avg_pool2d(x, 1)  # (B, 2048, 1, 1)


class Deep3DRecon(nn.Module):
    """Deep3DFaceRecon's coefficient regressor: (B, 3, 224, 224) RGB [0, 1] -> (B, 257)."""

    def __init__(self):
        super().__init__()
        self.backbone = ResNet50Trunk()
        self.final_layers = nn.ModuleList([nn.Conv2d(2048, n, 1, bias=True) for n in HEADS])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.backbone(x)
        return torch.cat([layer(x) for layer in self.final_layers], dim=1).flatten(1)


def load_deep3d(path) -> Deep3DRecon:
    """Deep3DFaceRecon ``epoch_20.pth`` (weights under ``net_recon``) -> regressor in eval mode."""
    model = Deep3DRecon()
    load_into(model, read_state_dict(path, FLAG, nested=("net_recon",)), path, FLAG)
    return model


def align_deep3d(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """RGB image + Face Mesh landmarks -> (224, 224, 3) face crop for the regressor."""
    template = (ARCFACE_TEMPLATE - 56.0) / DEEP3D_MARGIN * 2 + 112.0  # 112 -> 224, widened about the centre
    matrix = similarity_transform(five_points(landmarks), template)
    return cv2.warpAffine(np.ascontiguousarray(image), matrix, (224, 224), borderValue=0.0)


@torch.no_grad()
def expression_coefficients(model: Deep3DRecon, faces: list[np.ndarray], batch_size: int = 16) -> np.ndarray:
    """Aligned 224×224 RGB uint8 faces -> (N, 64) expression coefficients."""
    out = []
    for start in range(0, len(faces), batch_size):
        x = torch.from_numpy(np.stack(faces[start : start + batch_size])).permute(0, 3, 1, 2).float() / 255.0
        out.append(model(x)[:, EXPRESSION].double().numpy())
    return np.concatenate(out) if out else np.zeros((0, 64))


# --------------------------------------------------------------------------------------------------
# Landmark proxy
# --------------------------------------------------------------------------------------------------

# Face Mesh indices (canonical topology): pairs whose distance measures an expression.
_PAIRS = {
    "mouth_open": (13, 14),  # inner lips
    "mouth_width": (61, 291),  # mouth corners
    "lip_outer_open": (0, 17),
    "left_eye_open": (159, 145),
    "right_eye_open": (386, 374),
    "left_brow_raise": (105, 159),
    "right_brow_raise": (334, 386),
    "jaw_drop": (1, 152),  # nose tip to chin
    "left_corner_lift": (61, 1),
    "right_corner_lift": (291, 1),
}
LANDMARK_FEATURES = tuple(_PAIRS)


def landmark_expression(landmarks: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """Face Mesh (478, 3) pixels + head rotation (3, 3) -> (10,) pose- and scale-normalised measurements.

    Landmarks are rotated back to a frontal head (so a turn does not read as an expression) and divided
    by the inter-ocular distance (so the face's size in the frame does not either).
    """
    points = np.asarray(landmarks, dtype=np.float64) * np.array([1.0, -1.0, -1.0])  # camera frame
    frontal = points @ np.asarray(rotation, dtype=np.float64)  # R^T applied to each row vector
    iod = np.linalg.norm(frontal[468] - frontal[473]) + 1e-9
    return np.array([np.linalg.norm(frontal[a] - frontal[b]) / iod for a, b in _PAIRS.values()])


class EFID(FrechetMetric):
    """E-FID: Deep3DFaceRecon expression coefficients of every frame_stride-th face."""

    entries = (Entry("efid", "E-FID", "lower"),)
    flag, weights_name, stage = FLAG, WEIGHTS_NAME, "efid"

    def load_network(self, path):
        return load_deep3d(path)

    def update(self, video: Video, row: dict) -> None:
        stride = self.config.frame_stride
        for frames, obs, features in ((video.gen, video.obs_gen, self.gen_features),
                                      (video.ref, video.obs_ref, self.ref_features)):  # fmt: skip
            faces = [align_deep3d(f, o.landmarks)
                     for f, o in zip(frames[::stride], obs[::stride], strict=True) if o]  # fmt: skip
            if faces:
                features.append(self.timed("efid", expression_coefficients, self.net, faces))


class LandmarkExpressionFD(FrechetMetric):
    """The weight-free E-FID proxy: Fréchet distance of :func:`landmark_expression` over every face."""

    entries = (Entry("lmk_expr_fd", "Landmark expression FD (proxy)", "lower"),)
    stage = "lmk"

    def update(self, video: Video, row: dict) -> None:
        for obs, features in ((video.obs_gen, self.gen_features), (video.obs_ref, self.ref_features)):
            features += [landmark_expression(o.landmarks, o.pose.rotation) for o in obs if o]
