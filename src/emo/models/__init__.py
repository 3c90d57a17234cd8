"""The EMO network: one UNet class (backbone and ReferenceNet) plus the small condition encoders.

Importing this package loads torch and diffusers; the `emo` command's parsers never import it, so
`emo --help` stays quick (tests/test_cli.py checks it).
"""

from emo.models.audio_projector import AudioProjector
from emo.models.emo import EMO, Conditioning, ReferenceFeatures
from emo.models.face_locator import FaceLocator
from emo.models.speed_encoder import SpeedEncoder
from emo.models.unet import EMOUNet

__all__ = [
    "EMO",
    "Conditioning",
    "ReferenceFeatures",
    "EMOUNet",
    "AudioProjector",
    "FaceLocator",
    "SpeedEncoder",
]
