"""The EMO network: one UNet class (backbone and ReferenceNet) plus the small condition encoders."""

from emo.models.audio import AudioProjector
from emo.models.emo import EMO, Conditioning, ReferenceFeatures
from emo.models.face_locator import FaceLocator
from emo.models.speed import SpeedEncoder
from emo.models.unet import EMOUNet

__all__ = ["EMO", "Conditioning", "ReferenceFeatures", "EMOUNet", "AudioProjector", "FaceLocator",
           "SpeedEncoder"]
