"""The settings that shape a dataset: :class:`PreprocessConfig`, and ``DIR/dataset.json``, which records
them with the fingerprint of the audio encoder that made the clips' features (EMO.md §4).

A rerun, a resume or ``--add-audio-features`` with other settings or another wav2vec2 is refused, so that
every clip of a dataset is made the same way.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from emo.data import manifest as mf
from emo.data.scenes import SceneConfig
from emo.errors import EmoError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreprocessConfig:
    """Settings that shape the dataset (stored in DIR/dataset.json; a rerun must use the same)."""

    fps: float = 30.0  # output frame rate (paper: 30)
    size: int = 512  # output frames are size x size (paper: 512)
    min_clip_s: float = 3.0  # shorter scenes are dropped (too_short)
    max_clip_s: float = 12.0  # longer scenes are cut into equal clips no longer than this
    scene: SceneConfig = field(default_factory=SceneConfig)  # scene-cut detector settings
    analysis_fps: float = 5.0  # face detection / camera-motion samples per second in the analysis pass
    analysis_width: int = 640  # analysis frames are downscaled to this width (detection, motion)
    min_face_px: float = 96.0  # median face-box height in source pixels below which: face_too_small
    min_face_presence: float = 0.8  # fraction of analysis samples that must show a face, else no_face
    multi_face_ratio: float = (
        0.4  # a second face counts if its box is at least this fraction of the largest's height
    )
    max_multi_face_frac: float = 0.2  # more samples than this with 2+ counted faces: multiple_faces
    max_camera_motion: float = 0.08  # median background speed (frame widths / s) above which: camera_motion
    crop_expand: float = 1.8  # the union of the clip's face boxes is widened by this factor for the crop
    min_landmark_frac: float = (
        0.8  # fraction of output frames where face mesh must find the face, else face_lost
    )
    jpeg_quality: int = 95  # quality of the stored frames

    def __post_init__(self):
        checks = [
            (self.fps > 0, f"--fps must be > 0, got {self.fps}"),
            (self.size >= 16, f"--size must be >= 16, got {self.size}"),
            (
                0 < self.min_clip_s <= self.max_clip_s,
                f"need 0 < --min-clip <= --max-clip, got {self.min_clip_s}, {self.max_clip_s}",
            ),
            (self.analysis_fps > 0, f"--analysis-fps must be > 0, got {self.analysis_fps}"),
            (self.crop_expand >= 1, f"--crop-expand must be >= 1, got {self.crop_expand}"),
            (1 <= self.jpeg_quality <= 100, f"--jpeg-quality must be in 1..100, got {self.jpeg_quality}"),
        ]
        for ok, message in checks:
            if not ok:
                raise EmoError(message)

    def to_json(self) -> dict:
        return asdict(self)


ENCODER_KEY = "audio_encoder"  # in dataset.json: audio_encoder_id of the features' wav2vec2, or null
CODEC_KEY = "codec"  # in dataset.json: the fingerprint of the codec that made the clips' latents
RECORDED_KEYS = (ENCODER_KEY, CODEC_KEY)  # what the dataset was given later, not preprocessing options


def check_dataset_config(root: Path, config: PreprocessConfig, encoder: str | None, encoder_path) -> None:
    """Refuse to add to a dataset made with other settings or another audio encoder; else record them."""
    path = root / mf.DATASET_CONFIG
    wanted = config.to_json()
    if not path.is_file():
        root.mkdir(parents=True, exist_ok=True)
        mf.write_json(path, {**wanted, ENCODER_KEY: encoder})
        return
    existing = mf.read_json(path)
    settings = {k: v for k, v in existing.items() if k not in RECORDED_KEYS}
    if settings != wanted:
        changed = sorted(k for k in set(settings) | set(wanted) if settings.get(k) != wanted.get(k))
        raise EmoError(
            f"{root} was made with different settings ({', '.join(changed)}); use the same options "
            "or a new --out directory"
        )
    check_encoder(root, existing, encoder, encoder_path, adding=False)


def check_encoder(root: Path, existing: dict, encoder: str | None, encoder_path, adding: bool) -> None:
    """Every clip's audio features must come from one wav2vec2 (or the dataset has none yet)."""
    if ENCODER_KEY not in existing:  # made before the encoder was recorded: take this run's word for it
        logger.warning("%s does not record its audio encoder; recording %s", root, encoder_path or "none")
        mf.write_json(root / mf.DATASET_CONFIG, {**existing, ENCODER_KEY: encoder})
        return
    recorded = existing[ENCODER_KEY]
    if recorded == encoder:
        return
    if adding and recorded is None:  # the first features of a dataset made without them
        mf.write_json(root / mf.DATASET_CONFIG, {**existing, ENCODER_KEY: encoder})
        return
    if encoder is None:
        raise EmoError(
            f"{root} was made with --audio-encoder (wav2vec2 {recorded[:15]}...); resume with the same "
            "--audio-encoder, so that every clip has audio features from one model"
        )
    if recorded is None:
        raise EmoError(
            f"{root} was made without --audio-encoder; resume without it, then give every clip its features "
            f"with `emo preprocess --add-audio-features --out {root} --audio-encoder {encoder_path}`"
        )
    raise EmoError(
        f"--audio-encoder {encoder_path} is a different wav2vec2 model ({encoder[:15]}...) from the one "
        f"that made the audio features of {root} ({recorded[:15]}...); use the same weights or a new --out "
        "directory"
    )


def dataset_front_end(root: str | os.PathLike) -> str | None:
    """The id of the audio front-end that made ``root``'s audio features (None: none, or not recorded)."""
    return mf.read_json(Path(root) / mf.DATASET_CONFIG).get(ENCODER_KEY)


def config_from_dataset(root: Path) -> PreprocessConfig:
    data = mf.read_json(root / mf.DATASET_CONFIG)
    data.pop(ENCODER_KEY, None)
    return PreprocessConfig(**{**data, "scene": SceneConfig(**data["scene"])})
