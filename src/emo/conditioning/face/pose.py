"""6-DoF head pose from Face Mesh landmarks, and head rotation speed (EMO paper Sec. 3.3; EMO.md §4).

Pose: the rigid points of the observed mesh are fitted to the canonical 3D face
(:mod:`~emo.conditioning.face.canonical`) by a least-squares similarity transform (Umeyama). Face Mesh
gives x, y in pixels and a relative depth z on the same scale as x, so this is a weak-perspective fit in
3D: fast (one 3×3 SVD) and with no camera intrinsics to guess.

Sign convention (camera frame: x to the image right, y up, z toward the viewer; a frontal face looking
at the camera has yaw = pitch = roll = 0):

- ``R = Rz(roll) · Ry(yaw) · Rx(pitch)`` maps the canonical face to the observed one;
- yaw > 0: the face turns toward the image's right (the subject's left);
- pitch > 0: the face tilts down (chin toward the chest);
- roll > 0: the head tilts counter-clockwise as seen in the image.

Consequences the tests check: mirroring the image left/right negates yaw and roll and keeps pitch;
rotating the image counter-clockwise by θ adds θ to roll.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from emo.conditioning.face.canonical import load_canonical_face, similarity

# Face Mesh (x px, y px down, z px away from the viewer) -> camera frame (x right, y up, z to viewer).
_TO_CAMERA = np.array([1.0, -1.0, -1.0])


@dataclass(frozen=True)
class HeadPose:
    """Head rotation (degrees, see the module docstring for signs) and position."""

    yaw: float  # degrees, > 0 turned toward the image right
    pitch: float  # degrees, > 0 looking down
    roll: float  # degrees, > 0 tilted counter-clockwise in the image
    rotation: np.ndarray  # (3, 3) = Rz(roll) Ry(yaw) Rx(pitch), canonical -> camera frame
    translation: np.ndarray  # (3,) canonical nose tip in image pixels (x, y) and relative depth z
    scale: float  # pixels per canonical unit: the apparent head size (a depth proxy)


def euler_from_rotation(rotation: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) degrees of R = Rz(roll) Ry(yaw) Rx(pitch)."""
    yaw = math.degrees(math.asin(-float(np.clip(rotation[2, 0], -1.0, 1.0))))
    pitch = math.degrees(math.atan2(rotation[2, 1], rotation[2, 2]))
    roll = math.degrees(math.atan2(rotation[1, 0], rotation[0, 0]))
    return yaw, pitch, roll


def rotation_from_euler(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """R = Rz(roll) Ry(yaw) Rx(pitch), angles in degrees."""
    y, p, r = (math.radians(a) for a in (yaw, pitch, roll))
    rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    return rz @ ry @ rx


def head_pose(landmarks: np.ndarray) -> HeadPose:
    """Fit the canonical face to Face Mesh landmarks (≥468, 3) in pixels (x right, y down, z as Face Mesh)."""
    face = load_canonical_face()
    rigid = face["rigid"]
    observed = np.asarray(landmarks, dtype=np.float64)[rigid] * _TO_CAMERA  # (K, 3)
    scale, rotation, translation = similarity(face["canonical"][rigid].astype(np.float64), observed)
    yaw, pitch, roll = euler_from_rotation(rotation)
    return HeadPose(
        yaw=yaw,
        pitch=pitch,
        roll=roll,
        rotation=rotation,
        translation=translation * _TO_CAMERA,  # back to image coordinates
        scale=scale,
    )


def geodesic_angles(rotations: np.ndarray) -> np.ndarray:
    """Angle in degrees between consecutive rotations, (N, 3, 3) -> (N - 1,): |log(R_i R_{i-1}^T)|."""
    rotations = np.asarray(rotations, dtype=np.float64)
    cos = (np.einsum("nij,nij->n", rotations[1:], rotations[:-1]) - 1.0) / 2.0  # trace(R_i R_{i-1}^T)
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def smooth_rotations(rotations: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-weighted average of neighbouring rotations (sigma in frames), projected back onto SO(3).

    Averaging rotations before differencing removes the frame-to-frame jitter of the landmark
    detector, which would otherwise add to every speed (jitter only ever adds angle).
    """
    if sigma <= 0:
        return np.asarray(rotations, dtype=np.float64)
    rotations = np.asarray(rotations, dtype=np.float64)
    n = len(rotations)
    radius = max(1, int(math.ceil(3 * sigma)))
    offsets = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    index = np.clip(np.arange(n)[:, None] + offsets, 0, n - 1)  # (N, W), replicate at the ends
    mean = np.einsum("w,nwij->nij", weights / weights.sum(), rotations[index])  # (N, 3, 3)
    u, _, vt = np.linalg.svd(mean)
    d = np.sign(np.linalg.det(u @ vt))
    u[:, :, 2] *= d[:, None]
    return u @ vt


def rotation_speed(
    rotations: np.ndarray, src_fps: float, target_fps: float = 30.0, smooth: float = 1.0
) -> np.ndarray:
    """Head rotation speed per frame: (N, 3, 3) -> (N,) degrees per frame at ``target_fps``.

    Speed of frame i is the geodesic angle between the (lightly smoothed, ``smooth`` = Gaussian sigma in
    source frames; 0 = off) rotations of frames i-1 and i, rescaled from ``src_fps`` to degrees per frame
    at ``target_fps`` (EMO measures speed at the dataset's 30 fps). Frame 0 repeats frame 1's speed.
    Frames without a face may be NaN rotations: they hold the nearest valid rotation.
    """
    rotations = np.asarray(rotations, dtype=np.float64)
    if rotations.ndim != 3 or rotations.shape[1:] != (3, 3):
        raise ValueError(f"rotations must be (N, 3, 3), got {rotations.shape}")
    n = len(rotations)
    if n == 0:
        return np.zeros(0)
    valid = np.isfinite(rotations).all(axis=(1, 2))
    if not valid.any():
        raise ValueError("no valid rotation (no face in any frame)")
    if not valid.all():
        valid_index = np.flatnonzero(valid)
        nearest = valid_index[np.abs(np.arange(n)[:, None] - valid_index[None]).argmin(axis=1)]
        rotations = rotations[nearest]
    if n == 1:
        return np.zeros(1)
    angles = geodesic_angles(smooth_rotations(rotations, smooth)) * (src_fps / target_fps)  # (N-1,)
    return np.concatenate([angles[:1], angles])
