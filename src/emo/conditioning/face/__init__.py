"""Face analysis: detection, landmarks, head pose and speed, square crops and face-region masks.

Public API (stable; generation, preprocessing and the dataset readers import it from here):

- :class:`Box`, :func:`square_crop_box`, :func:`crop_and_resize`, :func:`box_in_crop`, :func:`center_square`
- :func:`region_mask`, :func:`box_mask`, :func:`parse_region`, ``REGIONS``, ``REGION_HELP``, :func:`mouth_boxes`,
  :func:`lower_face_mask`
- :class:`FaceAnalyzer` (``detect``, ``analyze``, ``analyze_video``), :class:`FaceObservation`
- :class:`HeadPose`, :func:`head_pose`, :func:`rotation_speed`, :func:`euler_from_rotation`
- :class:`Portrait`, :func:`prepare_portrait`
"""

from emo.conditioning.face.analyzer import FaceAnalyzer, FaceObservation
from emo.conditioning.face.geometry import (
    DEFAULT_EXPAND,
    REGION_HELP,
    REGIONS,
    Box,
    box_in_crop,
    box_mask,
    center_square,
    crop_and_resize,
    lower_face_mask,
    mouth_boxes,
    parse_region,
    region_mask,
    square_crop_box,
    union_of,
)
from emo.conditioning.face.portrait import Portrait, prepare_portrait
from emo.conditioning.face.pose import (
    HeadPose,
    euler_from_rotation,
    geodesic_angles,
    head_pose,
    rotation_from_euler,
    rotation_speed,
)

__all__ = [
    "DEFAULT_EXPAND",
    "REGIONS",
    "REGION_HELP",
    "Box",
    "FaceAnalyzer",
    "FaceObservation",
    "HeadPose",
    "Portrait",
    "box_in_crop",
    "box_mask",
    "center_square",
    "crop_and_resize",
    "euler_from_rotation",
    "geodesic_angles",
    "head_pose",
    "lower_face_mask",
    "mouth_boxes",
    "parse_region",
    "prepare_portrait",
    "region_mask",
    "rotation_from_euler",
    "rotation_speed",
    "square_crop_box",
    "union_of",
]
