"""Face Locator (EMO Sec. 3.2): a light conv encoder of the face-region mask, added to the backbone's
latent after conv_in. Ours (EMO.md §2): channels 16/32/64/128 with three stride-2 convs (pixel -> latent
resolution), a zero-initialised output conv, so an untrained locator changes nothing."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from emo.models.attention import zero_


class FaceLocator(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(
        self, out_channels: int = 320, channels: tuple[int, ...] = (16, 32, 64, 128), in_channels: int = 1
    ):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        self.blocks = nn.ModuleList()
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            self.blocks.append(nn.Conv2d(c_in, c_in, 3, padding=1))
            self.blocks.append(nn.Conv2d(c_in, c_out, 3, padding=1, stride=2))
        self.conv_out = zero_(nn.Conv2d(channels[-1], out_channels, 3, padding=1))

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.config.channels) - 1)

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        """mask (B, 1, H, W) in {0, 1} at pixel resolution -> (B, out_channels, H/8, W/8)."""
        x = F.silu(self.conv_in(mask.to(self.conv_in.weight.dtype)))
        for conv in self.blocks:
            x = F.silu(conv(x))
        return self.conv_out(x)
