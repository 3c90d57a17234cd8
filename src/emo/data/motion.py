"""Camera-motion estimate for clip filtering: how fast the *background* moves.

A talking head moves its head; a camera pans, zooms or shakes. To tell them apart we track corner
features outside the person (the face box widened, and everything below it, the body) between
consecutive analysis frames with pyramidal Lucas-Kanade flow, and take the median displacement
magnitude. Magnitudes (not the median vector) so that a zoom or a rotation, whose flow vectors cancel
out, still counts. The result is expressed as a fraction of the frame width per second, so it does not
depend on resolution or on how densely frames are sampled. A plain wall or a close-up with
little background gives too few reliable tracks for a measurement; the clip filter then needs
measurements on enough of the clip before it calls the camera moving.
"""

from __future__ import annotations

import numpy as np


class CameraMotion:
    """Feed grayscale analysis frames with their face boxes; read per-step background speeds."""

    def __init__(self, max_corners: int = 200, min_points: int = 12):
        self.max_corners = max_corners  # corners tracked per frame
        self.min_points = min_points  # fewer reliable tracks than this: no measurement
        self._prev: np.ndarray | None = None
        self._prev_points: np.ndarray | None = None
        self._prev_time = 0.0

    @staticmethod
    def _background_mask(shape, faces) -> np.ndarray:
        height, width = shape
        mask = np.full((height, width), 255, dtype=np.uint8)
        for x0, y0, x1, y1 in faces:
            w, h = x1 - x0, y1 - y0
            # The head moves on its own: exclude the face widened by half a face on each side and up
            # (hair), and the body below it.
            a, b = int(max(0, x0 - 0.5 * w)), int(min(width, x1 + 0.5 * w))
            mask[int(max(0, y0 - 0.5 * h)) :, a:b] = 0
        return mask

    def push(self, gray: np.ndarray, time_s: float, faces) -> float | None:
        """Add a frame (H, W) uint8 at ``time_s`` with face boxes (x0, y0, x1, y1) in its pixels.

        Returns the background speed since the previous frame (fraction of the width per second), or
        None for the first frame or when there is too little background texture to tell.
        """
        import cv2

        speed = None
        if (
            self._prev is not None
            and self._prev_points is not None
            and len(self._prev_points) >= self.min_points
        ):
            flow = dict(winSize=(21, 21), maxLevel=3)
            points, status, _ = cv2.calcOpticalFlowPyrLK(self._prev, gray, self._prev_points, None, **flow)
            back, back_status, _ = cv2.calcOpticalFlowPyrLK(gray, self._prev, points, None, **flow)
            # Forward-backward check: a track that does not return to its start (occlusion, an edge
            # sliding along itself) is not evidence of camera motion.
            error = np.linalg.norm((back - self._prev_points).reshape(-1, 2), axis=1)
            ok = (status.reshape(-1) == 1) & (back_status.reshape(-1) == 1) & (error < 1.0)
            if ok.sum() >= self.min_points and time_s > self._prev_time:
                moved = np.linalg.norm((points - self._prev_points).reshape(-1, 2)[ok], axis=1)
                speed = float(np.median(moved)) / gray.shape[1] / (time_s - self._prev_time)
        mask = self._background_mask(gray.shape, faces)
        self._prev_points = cv2.goodFeaturesToTrack(
            gray, maxCorners=self.max_corners, qualityLevel=0.01, minDistance=7, mask=mask
        )
        self._prev = gray
        self._prev_time = time_s
        return speed
