"""The generation-time portrait: load, find the face, crop to a square, build the face-region mask (EMO.md §1)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np

from emo.conditioning.face.analyzer import FaceAnalyzer, FaceObservation
from emo.conditioning.face.geometry import (
    DEFAULT_EXPAND,
    Box,
    box_in_crop,
    center_square,
    crop_and_resize,
    mouth_boxes,
    parse_region,
    region_mask,
    square_crop_box,
)
from emo.errors import EmoError
from emo.media import load_image

logger = logging.getLogger(__name__)

# Below this face height (source pixels) the crop is mostly invented by the upscaler: say so.
MIN_FACE_PX = 64


@dataclass(frozen=True)
class Portrait:
    """A reference portrait ready for generation."""

    image: np.ndarray  # (size, size, 3) uint8 RGB crop
    mask: np.ndarray  # (size, size) float32 in {0, 1}: the face region the Face Locator sees
    face_box: Box | None  # face (mesh extents) in crop pixels; None if no face was found
    num_faces: int  # faces detected in the original image (the largest one is used)
    crop_box: Box  # the square crop in the original image's pixels (may extend past it: padded)
    observation: FaceObservation | None  # landmarks/pose in the original image's pixels
    # (4,) x0, y0, x1, y1 of the mouth (`mouth_boxes`), fractions of the crop: where the mouth guide moves the lips
    mouth_box: np.ndarray | None = None


def prepare_portrait(
    path: str | os.PathLike,
    size: int = 512,
    region: str | Box = "face",
    expand: float = DEFAULT_EXPAND,
    strict: bool = False,
    analyzer: FaceAnalyzer | None = None,
) -> Portrait:
    """Load a portrait, crop a square around its main face, resize to size², and make the region mask.

    - Several faces: the largest is used and the count logged; ``strict=True`` makes it an EmoError.
    - No face: EmoError naming the file and suggesting ``--region``; with ``region`` = ``full`` or an
      explicit box the centred square is used instead (no face needed).
    - A face under :data:`MIN_FACE_PX` high is used, with a warning giving its size (the result will be
      blurry: the crop is upscaled several times).
    - ``region``: ``face``, ``wide``, ``tall``, ``full`` or a :class:`Box` / ``"x0,y0,x1,y1"`` in pixels
      of the size² crop (see :func:`~emo.conditioning.face.geometry.region_mask`).
    """
    region = parse_region(region)
    image = load_image(path)
    height, width = image.shape[:2]
    own = analyzer is None
    analyzer = analyzer or FaceAnalyzer()
    try:
        boxes = analyzer.detect(image)
        # Also without boxes: analyze() then tries the whole-image mesh, which finds stylised faces the
        # detector misses.
        observation = analyzer.analyze(image, boxes=boxes)
    finally:
        if own:
            analyzer.close()
    if len(boxes) > 1:
        if strict:
            raise EmoError(
                f"{path}: {len(boxes)} faces found; give a portrait with one face (or drop --strict)"
            )
        logger.info("%s: %d faces found, using the largest", path, len(boxes))
    if observation is None:
        if isinstance(region, Box) or region == "full":
            logger.info("%s: no face found; using the centred square and region %s", path, region)
            crop = center_square(width, height)
            crop_image = crop_and_resize(image, crop, size)
            return Portrait(crop_image, region_mask(region, None, size), None, 0, crop, None)
        raise EmoError(
            f"no face found in {path}; pass --region x0,y0,x1,y1 (face box in the {size}² crop) or --region full"
        )
    crop = square_crop_box([observation.box], width, height, expand=expand)
    face_box = box_in_crop(observation.box, crop, size)
    face_w, face_h = observation.box.width, observation.box.height
    if face_h < MIN_FACE_PX:
        logger.warning(
            "%s: the face is only %.0fx%.0f px (under %d px high); its crop is upscaled %.1fx to %d², so "
            "expect a blurry video: use a larger or closer portrait",
            path,
            face_w,
            face_h,
            MIN_FACE_PX,
            size / max(crop.width, 1.0),
            size,
        )
    landmarks = observation.landmarks.copy()  # into pixels of the size² crop
    landmarks[:, 0] = (landmarks[:, 0] - crop.x0) * size / crop.width
    landmarks[:, 1] = (landmarks[:, 1] - crop.y0) * size / crop.height
    return Portrait(
        image=crop_and_resize(image, crop, size),
        mask=region_mask(region, face_box, size),
        face_box=face_box,
        num_faces=max(len(boxes), 1),
        crop_box=crop,
        observation=observation,
        mouth_box=mouth_boxes(landmarks[None], size)[0],
    )
