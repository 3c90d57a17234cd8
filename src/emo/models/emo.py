"""The EMO network as one object: backbone, ReferenceNet and the condition encoders.

Each component is a diffusers `ModelMixin` saved in its own subfolder (safetensors); a training stage
names the components it trains (see COMPONENTS).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from einops import rearrange
from torch import nn

from emo.config import DENOISED, PREDICTIONS, ModelConfig
from emo.errors import WEIGHT_LOAD_ERRORS, EmoError
from emo.models.audio_projector import AudioProjector
from emo.models.face_locator import FaceLocator
from emo.models.speed_encoder import SpeedEncoder
from emo.models.unet import EMOUNet

# Trainable units a stage can name (EMO.md §3).
COMPONENTS = (
    "backbone.spatial",  # SD1.5 layers of the backbone (resnets, reference-attention, ff, ...)
    "backbone.temporal",  # temporal modules (AnimateDiff)
    "backbone.audio",  # audio-attention layers
    "backbone.speed",  # speed layers inside the temporal modules
    "reference_net",
    "face_locator",
    "audio_projector",
    "speed_encoder",
)
SUBFOLDERS = ("backbone", "reference_net", "face_locator", "audio_projector", "speed_encoder")


@dataclass(frozen=True)
class Conditioning:
    """Per-clip conditions. Any field may be None (that pathway is then off)."""

    audio: torch.Tensor | None = None  # (B, F, 2m+1, L, D) windowed wav2vec2 features per frame
    speed: torch.Tensor | None = None  # (B, F, 2m+1) windowed head rotation speed, degrees/frame
    face_mask: torch.Tensor | None = None  # (B, 1, H, W) face-region mask at pixel resolution


@dataclass(frozen=True)
class ReferenceFeatures:
    """ReferenceNet output for one clip: computed once, read by every denoising step."""

    spatial: dict[str, torch.Tensor]  # block name -> (B, N, C) reference tokens
    motion: dict[str, torch.Tensor] | None  # site name -> ((B n), C, H, W) motion-frame features
    num_motion: int  # n

    def cat(self, other: ReferenceFeatures) -> ReferenceFeatures:
        """Stack along the batch (to batch guidance passes into one forward)."""
        if (self.motion is None) != (other.motion is None) or self.num_motion != other.num_motion:
            raise ValueError("cannot batch reference features with different motion frames")
        motion = (
            None
            if self.motion is None
            else {k: torch.cat([v, other.motion[k]]) for k, v in self.motion.items()}
        )
        return replace(
            self,
            spatial={k: torch.cat([v, other.spatial[k]]) for k, v in self.spatial.items()},
            motion=motion,
        )


class EMO(nn.Module):
    def __init__(
        self,
        backbone: EMOUNet,
        reference_net: EMOUNet,
        face_locator: FaceLocator,
        audio_projector: AudioProjector,
        speed_encoder: SpeedEncoder,
        denoised: str = "frames",
        residual_scale: float = 1.0,
        prediction: str = "epsilon",
    ):
        super().__init__()
        if denoised not in DENOISED:
            raise EmoError(f"denoised must be one of {', '.join(DENOISED)}, got {denoised!r}")
        if not residual_scale > 0:
            raise EmoError(f"residual_scale must be > 0, got {residual_scale}")
        if prediction not in PREDICTIONS:
            raise EmoError(f"prediction must be one of {', '.join(PREDICTIONS)}, got {prediction!r}")
        self.denoised = denoised
        self.residual_scale = float(residual_scale)
        self.prediction = prediction  # what forward returns: ε or v (why v: emo.sampling)
        self.backbone = backbone
        self.reference_net = reference_net
        self.face_locator = face_locator
        self.audio_projector = audio_projector
        self.speed_encoder = speed_encoder

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: ModelConfig) -> EMO:
        unet = dict(
            in_channels=cfg.latent_channels,
            out_channels=cfg.latent_channels,
            block_out_channels=cfg.block_out_channels,
            layers_per_block=cfg.layers_per_block,
            attention_blocks=cfg.attention_blocks,
            num_attention_heads=cfg.num_attention_heads,
            norm_num_groups=cfg.norm_num_groups,
        )
        backbone = EMOUNet(
            **unet,
            audio_dim=cfg.token_dim,
            temporal=True,
            temporal_heads=cfg.temporal_heads,
            temporal_max_len=cfg.temporal_max_len,
            speed_dim=cfg.token_dim,
        )
        reference_net = EMOUNet(**unet, audio_dim=None, temporal=False, speed_dim=None, output_head=False)
        return cls(
            backbone,
            reference_net,
            FaceLocator(out_channels=cfg.block_out_channels[0], channels=cfg.face_locator_channels),
            AudioProjector(
                window=2 * cfg.audio_window + 1,
                num_layers=cfg.audio_layers,
                feature_dim=cfg.audio_feature_dim,
                hidden_dim=cfg.audio_hidden,
                num_tokens=cfg.audio_tokens,
                token_dim=cfg.token_dim,
            ),
            # Speeds are windowed like the audio: the dataset and generation use one m for both.
            SpeedEncoder(
                num_buckets=cfg.speed_buckets,
                max_speed=cfg.max_speed,
                window=2 * cfg.audio_window + 1,
                hidden_dim=cfg.speed_hidden,
                token_dim=cfg.token_dim,
            ),
            denoised=cfg.denoised,
            residual_scale=cfg.residual_scale,
            prediction=cfg.prediction,
        )

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        for name in SUBFOLDERS:
            getattr(self, name).save_pretrained(directory / name, safe_serialization=True)
        (directory / "emo.json").write_text(
            json.dumps(
                {
                    "format": "emo",
                    "components": list(SUBFOLDERS),
                    "denoised": self.denoised,
                    "residual_scale": self.residual_scale,
                    "prediction": self.prediction,
                },
                indent=2,
            )
        )

    @classmethod
    def from_pretrained(cls, directory: str | Path, torch_dtype: torch.dtype | None = None) -> EMO:
        directory = Path(directory)
        missing = [n for n in SUBFOLDERS if not (directory / n / "config.json").is_file()]
        if missing:
            raise EmoError(
                f"{directory} is not an EMO checkpoint: missing component(s) {', '.join(missing)} "
                "(expected subfolders written by `emo train export`)"
            )
        classes = dict(
            backbone=EMOUNet,
            reference_net=EMOUNet,
            face_locator=FaceLocator,
            audio_projector=AudioProjector,
            speed_encoder=SpeedEncoder,
        )
        meta = {}
        if (directory / "emo.json").is_file():
            try:
                meta = json.loads((directory / "emo.json").read_text())
            except (OSError, ValueError) as exc:
                raise EmoError(f"cannot read {directory / 'emo.json'}: {exc}") from exc
            if not isinstance(meta, dict):
                raise EmoError(f"{directory / 'emo.json'} is not a JSON object: re-export the model")
        parts = {}
        for name in SUBFOLDERS:
            try:
                parts[name] = classes[name].from_pretrained(directory / name, torch_dtype=torch_dtype)
            except WEIGHT_LOAD_ERRORS as exc:
                raise EmoError(f"cannot load {directory / name}: {str(exc).splitlines()[0]}") from exc
        # Checkpoints written before the residual option denoise frames.
        return cls(
            **parts,
            denoised=meta.get("denoised", "frames"),
            residual_scale=meta.get("residual_scale", 1.0),
            prediction=meta.get("prediction", "epsilon"),
        )

    # -- what is denoised ----------------------------------------------------------------------------
    def to_denoised(self, frames: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """(B, F, C, h, w) frame latents -> what the network denoises, given the clean reference latent
        (B, C, h, w): the frames themselves, or their scaled difference from the reference."""
        if self.denoised == "frames":
            return frames
        return (frames - reference[:, None]) * self.residual_scale

    @property
    def denoised_scale(self) -> float:
        """How much larger an error of the denoised latents is than the frame latents' error it means."""
        return self.residual_scale if self.denoised == "residual" else 1.0

    def from_denoised(self, denoised: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`to_denoised`: denoised latents -> (B, F, C, h, w) frame latents."""
        if self.denoised == "frames":
            return denoised
        return denoised / self.residual_scale + reference[:, None]

    # -- training ----------------------------------------------------------------------------------
    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        groups = {f"backbone.{k}": v for k, v in self.backbone.parameter_groups().items()}
        for name in ("reference_net", "face_locator", "audio_projector", "speed_encoder"):
            groups[name] = list(getattr(self, name).parameters())
        return groups

    def set_trainable(self, components: list[str]) -> list[nn.Parameter]:
        """Freeze everything, then unfreeze the named components; returns the trainable parameters."""
        unknown = sorted(set(components) - set(COMPONENTS))
        if unknown:
            raise EmoError(f"unknown component(s) {', '.join(unknown)}; known: {', '.join(COMPONENTS)}")
        self.requires_grad_(False)
        groups = self.parameter_groups()
        params = [p for name in components for p in groups.get(name, [])]
        for p in params:
            p.requires_grad_(True)
        return params

    def enable_gradient_checkpointing(self) -> None:
        self.backbone.enable_gradient_checkpointing()
        self.reference_net.enable_gradient_checkpointing()

    # -- forward -----------------------------------------------------------------------------------
    def reference_features(
        self,
        reference: torch.Tensor,  # (B, C, h, w) clean latent of the reference image
        motion: torch.Tensor | None = None,  # (B, n, C, h, w) clean latents of the motion frames
        num_motion: int = 0,  # n when `motion` is None: zero motion features (first clip, EMO paper)
    ) -> ReferenceFeatures:
        """One ReferenceNet pass over the reference image and the motion frames together."""
        batch = reference.shape[0]
        if motion is not None:
            num_motion = motion.shape[1]
            images = torch.cat([reference[:, None], motion], dim=1)  # (B, 1+n, C, h, w)
        else:
            images = reference[:, None]
        per_video = images.shape[1]
        feats = self.reference_net.reference_features(rearrange(images, "b t c h w -> (b t) c h w"))
        spatial = {k: v[::per_video] for k, v in feats.spatial.items()}  # the reference image's tokens
        if num_motion == 0:
            return ReferenceFeatures(spatial, None, 0)
        if motion is not None:
            motion_feats = {
                k: rearrange(
                    rearrange(v, "(b t) c h w -> b t c h w", b=batch)[:, 1:], "b n c h w -> (b n) c h w"
                )
                for k, v in feats.motion.items()
            }
        else:
            motion_feats = {
                k: v[::per_video].new_zeros((batch * num_motion, *v.shape[1:]))
                for k, v in feats.motion.items()
            }
        return ReferenceFeatures(spatial, motion_feats, num_motion)

    def forward(
        self,
        noisy: torch.Tensor,  # (B, F, C, h, w)
        timesteps: torch.Tensor,  # (B,)
        cond: Conditioning,
        reference: ReferenceFeatures | None,
    ) -> torch.Tensor:
        """Predict the noise (epsilon) of a clip, (B, F, C, h, w)."""
        num_frames = noisy.shape[1]
        audio_tokens = speed_tokens = face = None
        if cond.audio is not None:
            audio_tokens = self.audio_projector(rearrange(cond.audio, "b f w l d -> (b f) w l d"))
        if cond.speed is not None:
            speed_tokens = self.speed_encoder(rearrange(cond.speed, "b f w -> (b f) w"))
        if cond.face_mask is not None:
            face = self.face_locator(cond.face_mask)
        out = self.backbone(
            rearrange(noisy, "b f c h w -> (b f) c h w"),
            timesteps,
            num_frames=num_frames,
            reference=reference.spatial if reference is not None else None,
            motion=reference.motion if reference is not None else None,
            audio_tokens=audio_tokens,
            speed_tokens=speed_tokens,
            face_features=face,
        )
        return rearrange(out, "(b f) c h w -> b f c h w", f=num_frames)
