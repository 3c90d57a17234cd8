"""The EMO network: one UNet class (backbone and ReferenceNet) plus the small condition encoders.

The names below are imported on first use, so that importing a light submodule (``emo.models.bench`` for
the ``emo --help`` parser) does not pull in torch and diffusers.
"""

from __future__ import annotations

import importlib

_HOMES = {
    "EMO": "emo.models.emo",
    "Conditioning": "emo.models.emo",
    "ReferenceFeatures": "emo.models.emo",
    "EMOUNet": "emo.models.unet",
    "AudioProjector": "emo.models.audio_projector",
    "FaceLocator": "emo.models.face_locator",
    "SpeedEncoder": "emo.models.speed_encoder",
}
__all__ = list(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value
