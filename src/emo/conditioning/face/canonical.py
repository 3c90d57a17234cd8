"""The canonical 3D face that head poses are measured against, and how it was built.

MediaPipe's own ``canonical_face_model.obj`` is not shipped in the Python wheel, so we derived ours
(``emo/assets/canonical_face.npz``) from MediaPipe Face Mesh output on the talking-head fixtures
(tests/data/SOURCES.md), with :func:`build_canonical_face`:

1. Orientation and scale come from the generic 6-point head model widely used for head-pose
   estimation (S. Mallick, "Head Pose Estimation using OpenCV and Dlib", LearnOpenCV, 2016): nose tip
   (0, 0, 0), chin (0, −330, −65), eye outer corners (∓225, 170, −135), mouth corners (∓150, −150, −125);
   x to the image right, y up, z toward the viewer. Mesh indices 1, 152, 33, 263, 61, 291.
2. Every mesh (468 points) is aligned to that model by a similarity transform, then generalised
   Procrustes analysis iterates: mean shape, re-align on the 200 most stable points, re-orient.
3. The mean is made exactly left/right symmetric: each point is paired with its mirror image by an
   optimal assignment (the mesh topology is symmetric) and averaged with it. Symmetry is what makes
   a mirrored image give exactly the negated yaw.
4. ``rigid``: the 40% of points that move least relative to the head (forehead, nose, cheekbones,
   eye corners; not lips, jaw, eyelids, brows), closed under mirroring. Poses are fitted on these so
   talking and expressions do not read as head rotation.

``emo dev canonical-face OUT.npz VIDEO...`` rebuilds it (:func:`face_meshes`, then :func:`build_canonical_face`).
"""

from __future__ import annotations

import functools
from importlib import resources

import numpy as np

from emo.errors import EmoError
from emo.media import iter_video_frames

# Generic 6-point head model (Mallick 2016), see the module docstring, and its Face Mesh indices.
SIX_POINT_MODEL = np.array(
    [[0, 0, 0], [0, -330, -65], [-225, 170, -135], [225, 170, -135], [-150, -150, -125], [150, -150, -125]],
    dtype=np.float64,
)
SIX_POINT_INDICES = [1, 152, 33, 263, 61, 291]
NUM_MESH_POINTS = 468  # Face Mesh points; 468..477 are the iris points of refine_landmarks


def similarity(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares s, R, t with dst ≈ s·R·src + t (Umeyama 1991). src, dst: (N, 3)."""
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src0, dst0 = src - src_mean, dst - dst_mean
    u, sing, vt = np.linalg.svd(dst0.T @ src0)
    d = np.ones(3)
    d[2] = np.sign(np.linalg.det(u @ vt)) or 1.0  # a rotation, never a reflection
    rotation = (u * d) @ vt
    scale = float((sing * d).sum() / max((src0**2).sum(), 1e-12))
    return scale, rotation, dst_mean - scale * rotation @ src_mean


def _apply(transform, points: np.ndarray) -> np.ndarray:
    scale, rotation, translation = transform
    return scale * points @ rotation.T + translation


def build_canonical_face(meshes: np.ndarray, iterations: int = 5) -> dict[str, np.ndarray]:
    """Canonical face from Face Mesh landmarks (M, ≥468, 3) in the model frame (x right, y up, z to viewer)."""
    from scipy.optimize import linear_sum_assignment  # here: only `emo dev canonical-face` uses it

    meshes = np.asarray(meshes, dtype=np.float64)[:, :NUM_MESH_POINTS]
    aligned = np.stack([_apply(similarity(m[SIX_POINT_INDICES], SIX_POINT_MODEL), m) for m in meshes])
    mean = aligned.mean(0)
    stable = np.arange(NUM_MESH_POINTS)
    for _ in range(iterations):
        aligned = np.stack([_apply(similarity(m[stable], mean[stable]), m) for m in meshes])
        mean = aligned.mean(0)
        spread = np.sqrt(((aligned - mean) ** 2).sum(-1).mean(0))  # (468,) motion relative to the head
        stable = np.argsort(spread)[:200]
        mean = _apply(similarity(mean[SIX_POINT_INDICES], SIX_POINT_MODEL), mean)
    mirrored = mean * np.array([-1.0, 1.0, 1.0])
    cost = ((mean[:, None] - mirrored[None]) ** 2).sum(-1)
    _, mirror = linear_sum_assignment(cost)
    if not np.array_equal(mirror[mirror], np.arange(NUM_MESH_POINTS)):
        raise ValueError("mirror pairing of the mesh is not an involution; use more (frontal) faces")
    canonical = (mean + mirrored[mirror]) / 2
    spread = np.maximum(spread, spread[mirror])
    rigid = np.flatnonzero(spread <= np.quantile(spread, 0.4))
    return {
        "canonical": canonical.astype(np.float32),  # (468, 3) model frame, units of the 6-point model
        "rigid": rigid.astype(np.int64),  # indices used for pose fitting
        "mirror": mirror.astype(np.int64),  # index of each point's mirror image
    }


@functools.lru_cache(maxsize=1)
def load_canonical_face() -> dict[str, np.ndarray]:
    """The shipped canonical face: {"canonical": (468, 3), "rigid": (K,), "mirror": (468,)}."""
    with resources.files("emo.assets").joinpath("canonical_face.npz").open("rb") as f:
        data = np.load(f)
        return {key: data[key] for key in data.files}


def face_meshes(videos: list[str]) -> np.ndarray:
    """Face Mesh points (N, 478, 3) of every video frame with a face, in the model frame: x right, y up,
    z toward the viewer (Face Mesh tracks the face through each video)."""
    import mediapipe as mp  # here: only `emo dev canonical-face` uses it

    meshes = []
    for video in videos:
        with mp.solutions.face_mesh.FaceMesh(
            static_image_mode=False, max_num_faces=1, refine_landmarks=True
        ) as mesh:
            for frame in iter_video_frames(video):
                result = mesh.process(frame)
                if result.multi_face_landmarks:
                    h, w = frame.shape[:2]
                    points = [(p.x * w, -p.y * h, -p.z * w) for p in result.multi_face_landmarks[0].landmark]
                    meshes.append(np.array(points))
    if not meshes:
        raise EmoError(f"no face found in {', '.join(map(str, videos))}")
    return np.stack(meshes)
