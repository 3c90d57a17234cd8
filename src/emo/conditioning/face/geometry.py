"""Boxes, square face crops and face-region masks (EMO.md §1, §4, §5).

Coordinates are pixels, x to the right, y down, boxes half-open in spirit: (x0, y0) top-left corner,
(x1, y1) bottom-right corner, floats.

Face regions (the Face Locator's mask, EMO paper Sec. 3.2) are chosen at generation time:

- ``face``: the reference face box, slightly expanded — the head stays about where it is;
- ``wide``: a wider box — room for sideways head sway;
- ``tall``: a taller box — room for nodding;
- ``full``: the whole frame — the face is free to move;
- an explicit box ``x0,y0,x1,y1`` in crop pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from emo.errors import EmoError


@dataclass(frozen=True)
class Box:
    """Axis-aligned box in pixel coordinates (floats)."""

    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def area(self) -> float:
        return max(0.0, self.width) * max(0.0, self.height)

    @property
    def center(self) -> tuple[float, float]:
        return ((self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2)

    def expand(self, ratio: float, ratio_y: float | None = None) -> Box:
        """Scale width by ``ratio`` and height by ``ratio_y`` (default ``ratio``) about the centre."""
        cx, cy = self.center
        half_w = self.width * ratio / 2
        half_h = self.height * (ratio if ratio_y is None else ratio_y) / 2
        return Box(cx - half_w, cy - half_h, cx + half_w, cy + half_h)

    def union(self, other: Box) -> Box:
        return Box(
            min(self.x0, other.x0), min(self.y0, other.y0), max(self.x1, other.x1), max(self.y1, other.y1)
        )

    def intersection_over_union(self, other: Box) -> float:
        inter = Box(
            max(self.x0, other.x0), max(self.y0, other.y0), min(self.x1, other.x1), min(self.y1, other.y1)
        )
        overlap = inter.area if inter.width > 0 and inter.height > 0 else 0.0
        total = self.area + other.area - overlap
        return overlap / total if total > 0 else 0.0

    def clip(self, width: float, height: float) -> Box:
        """Intersect with the image [0, width] × [0, height]."""
        return Box(
            min(max(self.x0, 0.0), width),
            min(max(self.y0, 0.0), height),
            min(max(self.x1, 0.0), width),
            min(max(self.y1, 0.0), height),
        )

    def to_int(self) -> tuple[int, int, int, int]:
        """Rounded (x0, y0, x1, y1)."""
        return (round(self.x0), round(self.y0), round(self.x1), round(self.y1))

    def scale(self, factor_x: float, factor_y: float | None = None) -> Box:
        """Coordinates multiplied (for a resized image)."""
        fy = factor_x if factor_y is None else factor_y
        return Box(self.x0 * factor_x, self.y0 * fy, self.x1 * factor_x, self.y1 * fy)

    def shift(self, dx: float, dy: float) -> Box:
        return Box(self.x0 + dx, self.y0 + dy, self.x1 + dx, self.y1 + dy)

    @staticmethod
    def around(points: np.ndarray) -> Box:
        """Bounding box of (N, ≥2) points (x, y)."""
        points = np.asarray(points)
        return Box(
            float(points[:, 0].min()),
            float(points[:, 1].min()),
            float(points[:, 0].max()),
            float(points[:, 1].max()),
        )


def union_of(boxes: list[Box]) -> Box:
    if not boxes:
        raise ValueError("union of no boxes")
    out = boxes[0]
    for box in boxes[1:]:
        out = out.union(box)
    return out


# --------------------------------------------------------------------------------------------------
# Crops
# --------------------------------------------------------------------------------------------------

DEFAULT_EXPAND = (
    1.8  # crop side / face-box side; the face (mesh extents) fills ~55% of the crop, HDTF framing
)


def square_crop_box(boxes: list[Box], image_w: int, image_h: int, expand: float = DEFAULT_EXPAND) -> Box:
    """One fixed square crop for a whole clip (or a portrait) around the union of ``boxes``.

    The side is ``expand × max(union width, union height)``, centred on the union, then shifted to lie
    inside the image where it fits. When the side is larger than the image in some direction it stays
    centred on the face in that direction and :func:`crop_and_resize` pads the outside by repeating the
    border pixels (the face scale stays the same as for every other clip; shrinking the crop would not).
    """
    if expand <= 0:
        raise ValueError(f"expand must be positive, got {expand}")
    face = union_of(list(boxes))
    side = max(face.width, face.height) * expand
    cx, cy = face.center

    def place(center: float, limit: int) -> float:
        start = center - side / 2
        if side <= limit:
            start = min(max(start, 0.0), limit - side)
        return start

    x0, y0 = place(cx, image_w), place(cy, image_h)
    return Box(x0, y0, x0 + side, y0 + side)


def crop_and_resize(image: np.ndarray, box: Box, size: int) -> np.ndarray:
    """Crop ``box`` (any part outside the image padded with replicated border pixels) and resize to size².

    Area interpolation when shrinking (no aliasing), cubic when enlarging. Returns (size, size, 3) uint8.
    """
    # cv2 here, not at the top: processes that never crop import the face package (the preprocessing main
    # process, through emo.data.video_processing), and cv2 costs ~50 MiB.
    import cv2

    h, w = image.shape[:2]
    x0, y0, x1, y1 = box.to_int()
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"empty crop box {box}")
    pad_left, pad_top = max(0, -x0), max(0, -y0)
    pad_right, pad_bottom = max(0, x1 - w), max(0, y1 - h)
    crop = image[max(0, y0) : min(h, y1), max(0, x0) : min(w, x1)]
    if pad_left or pad_top or pad_right or pad_bottom:
        if crop.size == 0:
            raise ValueError(f"crop box {box} lies outside the {w}x{h} image")
        crop = cv2.copyMakeBorder(crop, pad_top, pad_bottom, pad_left, pad_right, cv2.BORDER_REPLICATE)
    interpolation = cv2.INTER_AREA if crop.shape[0] > size else cv2.INTER_CUBIC
    return np.ascontiguousarray(cv2.resize(crop, (size, size), interpolation=interpolation))


def box_in_crop(box: Box, crop: Box, size: int) -> Box:
    """Map a box from image coordinates into the coordinates of ``crop`` resized to size²."""
    return box.shift(-crop.x0, -crop.y0).scale(size / crop.width, size / crop.height)


def center_square(image_w: int, image_h: int) -> Box:
    """The largest centred square of the image."""
    side = min(image_w, image_h)
    x0, y0 = (image_w - side) / 2, (image_h - side) / 2
    return Box(x0, y0, x0 + side, y0 + side)


# --------------------------------------------------------------------------------------------------
# Face-region masks
# --------------------------------------------------------------------------------------------------

REGIONS = ("face", "wide", "tall", "full")
# (width scale, height scale) of the face box for each named region.
REGION_SCALES: dict[str, tuple[float, float]] = {
    "face": (1.2, 1.2),  # the face box with a margin: the head stays roughly in place
    "wide": (2.0, 1.3),  # room for head sway left/right
    "tall": (1.3, 1.8),  # room for nodding up/down
}
REGION_HELP = "face, wide, tall, full, or a box x0,y0,x1,y1 in pixels of the 512² crop"


def parse_region(text: str | Box) -> str | Box:
    """Parse a ``--region`` value: ``face|wide|tall|full`` or ``x0,y0,x1,y1`` (crop pixels)."""
    if isinstance(text, Box):
        return text
    value = str(text).strip().lower()
    if value in REGIONS:
        return value
    parts = value.split(",")
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        numbers = []
    if len(numbers) != 4:
        raise EmoError(f"--region {text!r} is not valid; use {REGION_HELP}")
    box = Box(*numbers)
    if box.x0 < 0 or box.y0 < 0 or box.width <= 0 or box.height <= 0:
        raise EmoError(f"--region {text!r} must have 0 <= x0 < x1 and 0 <= y0 < y1; use {REGION_HELP}")
    return box


def box_mask(box: Box, size: int) -> np.ndarray:
    """(size, size) float32 mask, 1 inside ``box`` (clipped to the image), 0 elsewhere."""
    x0, y0, x1, y1 = box.clip(size, size).to_int()
    mask = np.zeros((size, size), dtype=np.float32)
    mask[y0:y1, x0:x1] = 1.0
    return mask


def region_mask(region: str | Box, face_box_in_crop: Box | None, size: int) -> np.ndarray:
    """The Face Locator mask for a generation-time region choice: (size, size) float32 in {0, 1}.

    ``face``/``wide``/``tall`` scale ``face_box_in_crop`` by :data:`REGION_SCALES` (clipped to the
    crop); ``full`` is all ones; a :class:`Box` is used as given (crop pixels).
    """
    region = parse_region(region)
    if isinstance(region, Box):
        return box_mask(region, size)
    if region == "full":
        return np.ones((size, size), dtype=np.float32)
    if face_box_in_crop is None:
        raise EmoError(f"region {region!r} needs a detected face; use --region full or --region x0,y0,x1,y1")
    scale_w, scale_h = REGION_SCALES[region]
    return box_mask(face_box_in_crop.expand(scale_w, scale_h), size)


# Face Mesh's outer lip contour (corners 61 / 291, top 0, bottom 17).
LIPS_OUTER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185)
MOUTH_MARGIN = 0.25  # of the lips' width, on every side: the chin and cheeks move with the lips


def mouth_boxes(landmarks: np.ndarray, size: int) -> np.ndarray:
    """(F, 478, 3) Face Mesh landmarks in pixels of a size² crop -> (F, 4) float32 mouth boxes x0, y0, x1, y1
    as fractions of the crop: the outer lips grown by MOUTH_MARGIN, clipped to the crop."""
    points = landmarks[:, LIPS_OUTER, :2]  # (F, 20, 2)
    low, high = points.min(1), points.max(1)  # (F, 2)
    pad = MOUTH_MARGIN * (high[:, :1] - low[:, :1])  # (F, 1)
    return np.clip(np.concatenate([low - pad, high + pad], 1) / size, 0.0, 1.0).astype(np.float32)


# Around the mouth box, in box sizes: half a box to each side and above, a whole box below (the jaw drops).
LOWER_FACE_GROWTH = (0.5, 0.5, 0.5, 1.0)  # left, top, right, bottom


def lower_face_mask(mouth_box: np.ndarray, height: int, width: int) -> np.ndarray:
    """(height, width) float32 in {0, 1}: the cells of a height x width grid over the crop (a latent grid) whose
    centres lie in the lower face, the (4,) ``mouth_box`` (fractions of the crop) grown by LOWER_FACE_GROWTH."""
    x0, y0, x1, y1 = (float(v) for v in mouth_box)
    box_w, box_h = x1 - x0, y1 - y0
    left, top, right, bottom = LOWER_FACE_GROWTH
    ys = (np.arange(height) + 0.5) / height
    xs = (np.arange(width) + 0.5) / width
    rows = (ys >= y0 - top * box_h) & (ys <= y1 + bottom * box_h)
    cols = (xs >= x0 - left * box_w) & (xs <= x1 + right * box_w)
    return (rows[:, None] & cols[None, :]).astype(np.float32)
