"""LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric").

Two public files: the v0.1 linear heads of richzhang/PerceptualSimilarity (``weights/v0.1/alex.pth``
or ``vgg.pth``: keys ``lin0.model.1.weight`` ...) and the torchvision ImageNet backbone they sit on
(``alexnet-owt-7be5be79.pth`` or ``vgg16-397923af.pth``; only ``features.*`` is used). The trunk is
told from the heads' shapes. Distance: inputs in [-1, 1] through LPIPS's scaling layer, the five ReLU
stages' features unit-normalised over channels, squared differences weighted by the 1×1 heads,
averaged over space and summed over stages.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from emo.errors import EmoError
from emo.eval.metrics import Entry, Metric, Video, mean
from emo.eval.weights import load_into, read_state_dict

FLAG = "--lpips"
BACKBONE_FLAG = "--lpips-backbone"
CHANNELS = {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}
# Stage boundaries in torchvision's ``features`` Sequential (LPIPS's pretrained_networks slices).
SLICES = {"alex": (0, 2, 5, 8, 10, 12), "vgg": (0, 4, 9, 16, 23, 30)}


def _features(net: str) -> nn.Sequential:
    if net == "alex":
        return nn.Sequential(
            nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2),
        )  # fmt: skip
    layers, channels = [], 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, v, 3, padding=1), nn.ReLU()]
            channels = v
    return nn.Sequential(*layers)


class NetLinLayer(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))


class LPIPS(nn.Module):
    def __init__(self, net: str = "alex"):
        super().__init__()
        self.net_type = net
        self.register_buffer(
            "shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None], persistent=False
        )
        self.register_buffer(
            "scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None], persistent=False
        )
        self.features = _features(net)
        for i, c in enumerate(CHANNELS[net]):
            setattr(self, f"lin{i}", NetLinLayer(c))

    def _stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        out, bounds = [], SLICES[self.net_type]
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            x = self.features[lo:hi](x)
            out.append(x)
        return out

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB in [-1, 1] twice -> (B,) distances."""
        fa, fb = self._stages((a - self.shift) / self.scale), self._stages((b - self.shift) / self.scale)
        total = 0
        for i, (x, y) in enumerate(zip(fa, fb, strict=True)):
            x = x / (torch.sqrt((x**2).sum(dim=1, keepdim=True)) + 1e-10)
            y = y / (torch.sqrt((y**2).sum(dim=1, keepdim=True)) + 1e-10)
            total = total + getattr(self, f"lin{i}").model((x - y) ** 2).mean(dim=(2, 3))
        return total.flatten()


def load_lpips(heads_path, backbone_path) -> LPIPS:
    """LPIPS v0.1 heads (``alex.pth``/``vgg.pth``) + the matching torchvision ImageNet backbone file."""
    heads = read_state_dict(heads_path, FLAG)
    width = heads.get("lin1.model.1.weight")
    net = {192: "alex", 128: "vgg"}.get(int(width.shape[1]) if width is not None else -1)
    if net is None:
        raise EmoError(
            f"{FLAG} {heads_path}: not LPIPS v0.1 alex/vgg heads (no lin1.model.1.weight of 192 or 128 channels)"
        )
    backbone = read_state_dict(backbone_path, BACKBONE_FLAG)
    features = {k: v for k, v in backbone.items() if k.startswith("features.")}
    model = LPIPS(net)
    load_into(model.features, {k[len("features.") :]: v for k, v in features.items()}, backbone_path,
              f"{BACKBONE_FLAG} ({'alexnet' if net == 'alex' else 'vgg16'})")  # fmt: skip
    lins = nn.ModuleDict({f"lin{i}": getattr(model, f"lin{i}") for i in range(5)})
    load_into(lins, heads, heads_path, FLAG)
    return model.eval().requires_grad_(False)


@torch.no_grad()
def lpips_distances(
    model: LPIPS, a: list[np.ndarray], b: list[np.ndarray], batch_size: int = 8
) -> np.ndarray:
    """Paired uint8 RGB frames -> (N,) LPIPS distances."""
    out = []
    for start in range(0, len(a), batch_size):
        x = torch.from_numpy(np.stack(a[start : start + batch_size])).permute(0, 3, 1, 2).float() / 127.5 - 1
        y = torch.from_numpy(np.stack(b[start : start + batch_size])).permute(0, 3, 1, 2).float() / 127.5 - 1
        out.append(model(x, y).double().numpy())
    return np.concatenate(out) if out else np.zeros(0)


class LPIPSDistance(Metric):
    """LPIPS of every frame_stride-th paired frame (:attr:`~emo.eval.metrics.Video.paired_frames`)."""

    entries = (Entry("lpips", "LPIPS", "lower"),)
    flag = FLAG
    weights_name = "LPIPS v0.1 alex.pth/vgg.pth + torchvision backbone"
    enable = f"{FLAG} PATH {BACKBONE_FLAG} PATH"

    def __init__(self, config, timed):
        super().__init__(config, timed)
        self.values: list[float] = []  # per paired frame

    def load(self) -> None:
        if bool(self.config.lpips) != bool(self.config.lpips_backbone):
            raise EmoError(
                "LPIPS needs both --lpips (v0.1 heads) and --lpips-backbone (torchvision alexnet/vgg16)"
            )
        super().load()

    def load_network(self, path):
        return load_lpips(path, self.config.lpips_backbone)

    def update(self, video: Video, row: dict) -> None:
        pairs = video.paired_frames[:: self.config.frame_stride]
        d = self.timed("lpips", lpips_distances, self.net, [g for g, _ in pairs], [r for _, r in pairs])
        row["lpips"] = float(np.mean(d))
        self.values += list(d)

    def compute(self) -> list[tuple[float | None, str]]:
        return [(mean(self.values), f"{self.net.net_type}, paired frames")]
