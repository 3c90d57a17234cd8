"""Face detection, 478-point landmarks and head pose with MediaPipe (EMO.md §4: "the paper used MediaPipe").

Detection uses MediaPipe's full-range detector (trained for faces up to ~5 m away, so it finds the
small face of a seated person in a 1080×1920 frame), falls back to the short-range detector, and as a
last resort tiles large images so a tiny face becomes big enough in one tile. Landmarks come from Face
Mesh with ``refine_landmarks`` (478 points incl. irises), run on a square crop around the detected face
so small faces get the mesh's full input resolution.

For videos, :meth:`FaceAnalyzer.analyze_video` uses Face Mesh's tracking mode (landmarks of one frame
seed the next, no detector per frame), which is what makes ≥30 frames/s possible on 2 CPU cores.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from emo.conditioning.face.geometry import Box, crop_and_resize
from emo.conditioning.face.pose import HeadPose, head_pose

logger = logging.getLogger(__name__)

MESH_CROP_EXPAND = 1.8  # square crop side around a detection box, for the mesh of a single image
NMS_IOU = 0.3  # detections overlapping more than this are one face


@dataclass(frozen=True)
class FaceObservation:
    """One analysed face in one image, all in the image's pixel coordinates."""

    box: Box  # bounding box of the mesh landmarks (forehead to chin, cheek to cheek)
    landmarks: np.ndarray  # (478, 3) x, y pixels; z relative depth in x's scale, < 0 toward the viewer
    pose: HeadPose
    num_faces: int | None  # faces the detector found in this image; None where it did not run


class FaceAnalyzer:
    """MediaPipe face detection + Face Mesh + head pose. Use as a context manager (frees the graphs).

    Args:
        min_detection_confidence: detector score threshold.
        min_tracking_confidence: Face Mesh tracking threshold in video mode (below it, re-detect).
    """

    def __init__(self, min_detection_confidence: float = 0.5, min_tracking_confidence: float = 0.5):
        self.min_detection_confidence = min_detection_confidence
        self.min_tracking_confidence = min_tracking_confidence
        self._graphs: dict[str, object] = {}

    # ----------------------------------------------------------------------------------------------
    def _graph(self, name: str):
        if name not in self._graphs:
            import mediapipe as mp  # here: seconds to import, and only a FaceAnalyzer at work needs it

            solutions = mp.solutions
            if name == "full_range":
                graph = solutions.face_detection.FaceDetection(
                    model_selection=1, min_detection_confidence=self.min_detection_confidence
                )
            elif name == "short_range":
                graph = solutions.face_detection.FaceDetection(
                    model_selection=0, min_detection_confidence=self.min_detection_confidence
                )
            elif name == "mesh_image":
                graph = solutions.face_mesh.FaceMesh(
                    static_image_mode=True,
                    max_num_faces=1,
                    refine_landmarks=True,
                    min_detection_confidence=0.3,
                )
            elif name == "mesh_video":
                graph = solutions.face_mesh.FaceMesh(
                    static_image_mode=False,
                    max_num_faces=1,
                    refine_landmarks=True,
                    min_detection_confidence=self.min_detection_confidence,
                    min_tracking_confidence=self.min_tracking_confidence,
                )
            else:
                raise KeyError(name)
            self._graphs[name] = graph
        return self._graphs[name]

    def _process(self, name: str, image: np.ndarray):
        """Run one graph. Its native logging (glog/TFLite notices on every new graph) is silenced, so a
        user's terminal shows emo's own lines only (``-v`` keeps it)."""
        with _native_stderr_silenced():
            return self._graph(name).process(np.ascontiguousarray(image))

    def close(self) -> None:
        for graph in self._graphs.values():
            graph.close()
        self._graphs.clear()

    def __enter__(self) -> FaceAnalyzer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----------------------------------------------------------------------------------------------
    def _run_detector(self, name: str, image: np.ndarray) -> list[tuple[Box, float]]:
        h, w = image.shape[:2]
        result = self._process(name, image)
        found = []
        for detection in result.detections or []:
            rel = detection.location_data.relative_bounding_box
            box = Box(rel.xmin * w, rel.ymin * h, (rel.xmin + rel.width) * w, (rel.ymin + rel.height) * h)
            found.append((box.clip(w, h), float(detection.score[0])))
        return found

    def _tiles(self, image: np.ndarray) -> list[tuple[Box, float]]:
        h, w = image.shape[:2]
        side = max(min(h, w) // 2, 192)
        if side >= min(h, w):
            return []
        stride = side // 2
        found = []
        for y in range(0, max(1, h - side + stride), stride):
            for x in range(0, max(1, w - side + stride), stride):
                y0, x0 = min(y, h - side), min(x, w - side)
                tile = image[y0 : y0 + side, x0 : x0 + side]
                found += [(box.shift(x0, y0), score) for box, score in self._run_detector("full_range", tile)]
        return found

    def detect(self, image: np.ndarray) -> list[Box]:
        """Faces in an (H, W, 3) uint8 RGB image, largest first (pixel boxes of the detector)."""
        image = np.asarray(image)
        found = self._run_detector("full_range", image)
        if not found:
            found = self._run_detector("short_range", image)
        if not found:
            found = self._tiles(image)
        # Non-maximum suppression: the detectors and tiles can report one face several times.
        found.sort(key=lambda item: -item[1])
        kept: list[Box] = []
        for box, _ in found:
            if all(box.intersection_over_union(other) <= NMS_IOU for other in kept):
                kept.append(box)
        return sorted(kept, key=lambda box: -box.area)

    def _mesh_in_box(self, image: np.ndarray, box: Box) -> np.ndarray | None:
        """Face Mesh on a square crop around ``box``; landmarks (478, 3) in image pixels or None."""
        side = max(box.width, box.height) * MESH_CROP_EXPAND
        cx, cy = box.center
        crop_box = Box(cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
        size = int(min(max(round(side), 192), 768))  # the mesh sees 192-256 px; more is wasted work
        crop = crop_and_resize(image, crop_box, size)
        result = self._process("mesh_image", crop)
        if not result.multi_face_landmarks:
            return None
        points = _landmarks_array(result.multi_face_landmarks[0], size, size)  # crop pixels
        factor = crop_box.width / size
        points *= factor  # x, y and z share the scale
        points[:, 0] += crop_box.x0
        points[:, 1] += crop_box.y0
        return points

    def analyze(self, image: np.ndarray, boxes: list[Box] | None = None) -> FaceObservation | None:
        """Detect faces, then landmarks and pose of the largest; None if there is no face.

        ``boxes``: the result of :meth:`detect` on this image, if the caller already has it.
        """
        image = np.asarray(image)
        boxes = self.detect(image) if boxes is None else boxes
        landmarks = self._mesh_in_box(image, boxes[0]) if boxes else None
        if landmarks is None:
            # The detector can miss stylised faces the mesh still finds (and vice versa): last try.
            result = self._process("mesh_image", image)
            if not result.multi_face_landmarks:
                return None
            landmarks = _landmarks_array(result.multi_face_landmarks[0], image.shape[1], image.shape[0])
        return _observation(landmarks, num_faces=max(len(boxes), 1))

    def analyze_video(
        self, frames: Iterable[np.ndarray], detect_every: int = 0
    ) -> Iterator[FaceObservation | None]:
        """Analyse consecutive frames of one clip with Face Mesh tracking; yields one result per frame.

        ``detect_every`` > 0 also runs the detector on every n-th frame (from frame 0) to fill
        ``num_faces`` (None on the other frames); the main face is always the tracked one. Frames where
        tracking finds nothing fall back to :meth:`analyze` (detector + mesh on a crop).
        """
        for index, frame in enumerate(frames):
            frame = np.ascontiguousarray(frame)
            num_faces = len(self.detect(frame)) if detect_every > 0 and index % detect_every == 0 else None
            result = self._process("mesh_video", frame)
            if result.multi_face_landmarks:
                landmarks = _landmarks_array(result.multi_face_landmarks[0], frame.shape[1], frame.shape[0])
                yield _observation(landmarks, num_faces)
            else:
                yield self.analyze(frame)


@contextmanager
def _native_stderr_silenced():
    """Point file descriptor 2 at /dev/null for the duration (MediaPipe's C++ logging writes there
    directly, past Python's sys.stderr); with debug logging on, leave it alone."""
    if logger.isEnabledFor(logging.DEBUG):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _landmarks_array(face_landmarks, width: int, height: int) -> np.ndarray:
    points = np.array([(p.x, p.y, p.z) for p in face_landmarks.landmark], dtype=np.float64)  # normalised
    return points * np.array([width, height, width], dtype=np.float64)  # (478, 3) pixels


def _observation(landmarks: np.ndarray, num_faces: int | None) -> FaceObservation:
    return FaceObservation(
        box=Box.around(landmarks[:, :2]),
        landmarks=landmarks.astype(np.float32),
        pose=head_pose(landmarks),
        num_faces=num_faces,
    )
