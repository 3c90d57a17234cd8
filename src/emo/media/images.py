"""Images in and out (Pillow): every mode Pillow opens becomes the right RGB."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from emo.errors import EmoError
from emo.media.files import atomic_path, check_input, decode_reason

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image as (H, W, 3) uint8 RGB, whatever its mode (see :func:`image_to_rgb`).

    EXIF orientation is applied (a phone photo comes out upright). Raises EmoError naming the file if it
    is missing, empty, corrupt or not an image.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = check_input(path, "image")
    try:
        with Image.open(path) as image:
            image.load()
            rgb = image_to_rgb(ImageOps.exif_transpose(image))
    except UnidentifiedImageError:
        raise EmoError(
            f"cannot read image {path}: not a supported image format (use png, jpg, webp, bmp)"
        ) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise EmoError(f"cannot read image {path}: corrupt or truncated ({decode_reason(exc)})") from None
    if rgb.ndim != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise EmoError(f"cannot read image {path}: it has no pixels")
    return rgb


def image_to_rgb(image) -> np.ndarray:
    """A Pillow image of any mode (1, L, LA, P, PA, RGB, RGBA, CMYK, YCbCr, I;16, I, F...) -> (H, W, 3) uint8.

    - Transparency is composited onto a WHITE background (a cut-out portrait on white looks like a studio
      photo; black would read as hair).
    - 16-bit (I;16), 32-bit (I) and float (F) grayscale are scaled to 0-255 (:func:`_wide_gray_to_l`);
      Pillow's own convert clips them at 255, and a 16-bit portrait came out almost white.
    - 1-bit is a halftone (its grays are in the density of the dots): a radius-1 blur gives them back;
      the raw dots hide the face from the detector.
    """
    from PIL import Image, ImageFilter

    if image.mode == "1":
        image = image.convert("L").filter(ImageFilter.GaussianBlur(1))
    elif image.mode.startswith("I") or image.mode == "F":
        image = _wide_gray_to_l(image)
    if image.mode in ("RGBA", "RGBa", "LA", "La", "PA") or (
        image.mode == "P" and "transparency" in image.info
    ):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))


def _wide_gray_to_l(image):
    """A grayscale image with more than 8 bits (I;16*, I, F) -> 8-bit L, its range scaled, not clipped.

    I;16 is 16-bit by definition (0-65535). I and F say nothing about their range, so it is read off the
    values: a maximum of at most 1.0 (float only) is 0-1, at most 255 is 8-bit, at most 65535 is 16-bit,
    beyond that the maximum is white.
    """
    from PIL import Image

    values = np.asarray(image).astype(np.float64)  # (H, W)
    if image.mode.startswith("I;16"):
        top = 65535.0
    else:
        peak = float(values.max(initial=0.0))
        ranges = (1.0, 255.0, 65535.0) if image.mode == "F" else (255.0, 65535.0)
        top = next((t for t in ranges if peak <= t), peak)
    return Image.fromarray(np.clip(np.round(values * (255.0 / top)), 0, 255).astype(np.uint8), mode="L")


def save_image(path: str | os.PathLike, image: np.ndarray, overwrite: bool = True) -> Path:
    """Write an (H, W, 3) uint8 RGB image atomically; the format follows the suffix (png, jpg...)."""
    from PIL import Image

    with atomic_path(path, overwrite=overwrite) as temp:
        Image.fromarray(np.ascontiguousarray(image)).save(
            temp, format=Image.registered_extensions().get(Path(path).suffix.lower(), "PNG")
        )
    return Path(path)
