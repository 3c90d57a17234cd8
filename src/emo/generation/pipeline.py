"""Generation (EMO Sec. 3, EMO.md §1 and §5): one portrait + an audio track -> a talking/singing mp4.

    encode portrait once -> for each clip of f frames:
        ReferenceNet once (reference + previous clip's last n latents) -> denoise loop -> decode
        -> stream frames into the H.264 encoder

Clips chain through motion frames (the first clip gets zero motion features, EMO paper); the last clip is
trimmed so the video has ceil(duration x fps) frames. Memory stays flat in the audio length: the audio is
kept as one (F, L, D) feature row per frame and each clip's (f, 2m+1, L, D) window is gathered when the clip
runs; frames go to the encoder as they are decoded.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from tqdm.auto import tqdm

from emo.codec import LatentCodec, SDVAECodec, load_codec, to_uint8_frames
from emo.conditioning.audio_features import AudioEncoder
from emo.conditioning.audio_front_end import (
    FRONT_END_RECORD,
    WAV2VEC2_KIND,
    front_end_from_record,
    load_audio_front_end,
    read_front_end_record,
)
from emo.conditioning.face import Box, box_mask, lower_face_mask, parse_region, prepare_portrait
from emo.conditioning.mouth import MOUTH_GUIDE, MouthGuide, open_mouth
from emo.conditioning.windows import window
from emo.errors import EmoError
from emo.generation import AUDIO_GUIDANCE_REGIONS
from emo.media import VideoWriter, check_video_output, load_audio, num_frames_for
from emo.models import EMO, Conditioning, ReferenceFeatures
from emo.sampling import SAMPLERS, combine_guidance, guidance_plan, sample, steps_run
from emo.tiny import tiny_audio_model, tiny_emo, tiny_vae

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
FULL_MOUTH_GUIDANCE = 1.0  # --mouth-guidance left out, for a model with a mouth guide


@dataclass(frozen=True)
class GenerationOptions:
    steps: int = 40  # DDIM steps; the paper saw jitter below ~35
    sampler: str = "ddim"  # "ddim" or "dpm++" (DPM-Solver++ 2M: similar quality in fewer steps)
    speed: float = 0.7  # head rotation speed, degrees/frame at 30 fps (speech 0.1-1.0, singing 1.0-1.3)
    region: str = "face"  # face | wide | tall | full | x0,y0,x1,y1 (pixels of the 512² crop)
    seed: int = 0
    reference_guidance: float = 1.0  # classifier-free guidance on the reference image (1.0 = off)
    audio_guidance: float = 1.0  # classifier-free guidance on the audio (1.0 = off)
    # Where the audio guidance applies: "frame" (everywhere) or "mouth" (the lower face, LOWER_FACE_GROWTH around
    # the mouth; elsewhere the frame is denoised as unguided, which keeps the rest of the face intact).
    audio_guidance_region: str = "frame"
    # How far the generated lips are moved to the opening the audio calls for (the model's mouth guide,
    # emo.conditioning.mouth): None = the model's guide at FULL_MOUTH_GUIDANCE if it has one, 0 = off.
    mouth_guidance: float | None = None
    strength: float = 1.0  # 1.0: from pure noise (the paper); < 1: from the noised reference (SDEdit)
    fps: float = 30.0
    size: int = 512  # output side in pixels (a multiple of 8)
    clip_frames: int = 12  # f
    motion_frames: int = 4  # n
    decode_chunk: int = 4  # frames per VAE decode call (bounds decoder memory)
    max_duration: float = 600.0  # seconds of audio accepted without being asked (0 = no limit)
    strict: bool = False  # several faces in the portrait is an error rather than "take the largest"

    def validate(self) -> None:
        checks = [
            (self.steps >= 1, f"--steps must be >= 1, got {self.steps}"),
            (
                self.sampler in SAMPLERS,
                f"--sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}",
            ),
            (
                math.isfinite(self.speed) and 0 <= self.speed <= 5,
                f"--speed must be in [0, 5], got {self.speed}",
            ),
            (self.fps > 0 and math.isfinite(self.fps), f"--fps must be positive, got {self.fps}"),
            (
                self.size >= 64 and self.size % 8 == 0,
                f"--size must be a multiple of 8 and >= 64, got {self.size}",
            ),
            (
                self.clip_frames >= 1 and self.motion_frames >= 0,
                "clip and motion frame counts must be positive",
            ),
            (
                self.motion_frames <= self.clip_frames,  # motion frames are the previous clip's last n frames
                f"motion frames ({self.motion_frames}) must be <= clip frames ({self.clip_frames})",
            ),
            (self.reference_guidance >= 0 and self.audio_guidance >= 0, "guidance scales must be >= 0"),
            (
                self.audio_guidance_region in AUDIO_GUIDANCE_REGIONS,
                f"--audio-guidance-region must be one of {', '.join(AUDIO_GUIDANCE_REGIONS)}, "
                f"got {self.audio_guidance_region!r}",
            ),
            (0 < self.strength <= 1, f"--strength must be in (0, 1], got {self.strength}"),
            (
                self.mouth_guidance is None or 0 <= self.mouth_guidance <= 1,
                f"--mouth-guidance must be in [0, 1], got {self.mouth_guidance}",
            ),
            (self.decode_chunk >= 1, f"decode chunk must be >= 1, got {self.decode_chunk}"),
            # torch.Generator.manual_seed's range (outside it torch raises an internal-looking ValueError)
            (-(2**63) <= self.seed < 2**64, f"--seed must be in [-2^63, 2^64), got {self.seed}"),
        ]
        for ok, message in checks:
            if not ok:
                raise EmoError(message)
        region = parse_region(self.region)
        # A box outside the crop would give the Face Locator an all-zero mask, silently; fail before any work.
        if isinstance(region, Box) and not box_mask(region, self.size).any():
            raise EmoError(
                f"--region {self.region} lies outside the {self.size}² crop (x0, y0 must be < "
                f"{self.size}); give a box in pixels of the crop"
            )


@dataclass(frozen=True)
class GenerationProgress:
    clip: int  # the clip being denoised, from 0
    clips: int
    step: int  # denoising steps done over the whole video
    steps: int  # clips x steps per clip

    @property
    def fraction(self) -> float:
        return self.step / max(self.steps, 1)


@dataclass(frozen=True)
class GenerationResult:
    path: Path
    frames: int
    clips: int
    seconds: float  # wall-clock time of the whole generation

    def summary(self) -> str:
        return (
            f"wrote {self.path}: {self.frames} frames in {self.clips} clips, {self.seconds:.1f} s "
            f"({self.seconds / max(self.frames, 1):.2f} s/frame)"
        )


class EMOPipeline:
    """The EMO network with its frozen latent codec and audio encoder, ready to generate."""

    def __init__(
        self,
        model: EMO,
        codec: LatentCodec,
        audio_encoder,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        cache_dir: str | Path | None = None,
    ):
        self.device = torch.device(device)
        self.dtype = dtype
        self.model = model.to(self.device, dtype).eval().requires_grad_(False)
        self.codec = codec.to(self.device, dtype).eval().requires_grad_(False)
        self.audio_encoder = audio_encoder
        self.cache_dir = cache_dir
        self.defaults: dict = {}  # generation options the checkpoint sets for itself (model_defaults)
        # audio -> the mouth's opening, put into the decoded frames; if the model has one (from_weights)
        self.mouth_guide: MouthGuide | None = None

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    def from_weights(
        cls,
        weights: str | Path,
        codec: str | Path | None = None,
        audio_encoder: str | Path | None = None,
        device="cpu",
        dtype=torch.float32,
        cache_dir=None,
    ) -> EMOPipeline:
        """A trained checkpoint directory (`emo train export`): the network, its latent codec (``codec/`` or
        ``vae/``) and the audio front-end it was trained with (``audio_front_end.json``; wav2vec2 weights in
        ``wav2vec2/``), unless ``codec`` / ``audio_encoder`` are given explicitly."""
        weights = Path(weights)
        if not weights.is_dir():
            raise EmoError(f"--weights {weights}: no such directory")
        codec_spec = codec or next((weights / n for n in ("codec", "vae") if (weights / n).exists()), None)
        if codec_spec is None:
            raise EmoError(
                f"{weights} holds no codec/ or vae/: pass --codec PATH (a local diffusers VAE or "
                "tiny-autoencoder folder, or taef2) or put it inside the --weights directory"
            )
        model = EMO.from_pretrained(weights)
        pipe = cls(
            model,
            load_codec(codec_spec),
            trained_audio_front_end(weights, audio_encoder, device),
            device,
            dtype,
            cache_dir,
        )
        pipe.defaults = model_defaults(weights)
        if (weights / MOUTH_GUIDE).is_file():
            pipe.mouth_guide = MouthGuide.load(weights / MOUTH_GUIDE, model.backbone.config.in_channels)
            proj = model.audio_projector.config
            pipe.mouth_guide.check_features(weights / MOUTH_GUIDE, proj.num_layers, proj.feature_dim)
        return pipe

    @classmethod
    def tiny(
        cls, device="cpu", dtype=torch.float32, seed: int = 0, cache_dir=None, audio_shape: str = "tiny"
    ) -> EMOPipeline:
        """A random tiny model (smoke runs and tests; its video is noise-like by design). ``audio_shape="base"``
        gives it wav2vec2-base-shaped audio features (13 x 768), as a real model holds (benchmarks)."""
        model = tiny_emo(seed, audio_shape=audio_shape)
        audio = AudioEncoder(tiny_audio_model(seed, audio_shape))
        return cls(model, SDVAECodec(tiny_vae(seed)), audio, device, dtype, cache_dir)

    def optimize(
        self,
        channels_last: bool = False,
        compile: bool = False,
        compile_backend: str = "inductor",
        compile_mode: str | None = None,
    ) -> EMOPipeline:
        """Speed options. channels-last suits convolutions on GPUs (tensor cores); torch.compile fuses the
        backbone's elementwise work (the first clip pays the compile time; shapes stay fixed after it)."""
        if channels_last:
            for module in (self.model.backbone, self.model.reference_net, self.codec):
                module.to(memory_format=torch.channels_last)
        if compile:
            self.model.backbone = torch.compile(
                self.model.backbone, backend=compile_backend, mode=compile_mode, dynamic=False
            )
        return self

    # -- inputs ------------------------------------------------------------------------------------
    def prepare_audio(
        self, audio_path: str | Path, opts: GenerationOptions
    ) -> tuple[np.ndarray, torch.Tensor]:
        """Waveform (16 kHz mono) and per-frame features (F, L, D), float16 on the CPU.

        float16 as in the training data (emo preprocess stores features so): the model sees the features
        it was trained on, and a long track holds 20 kB a frame (wav2vec2-base) instead of 40.

        Not windowed here: a (F, 2m+1, L, D) copy would be 2m+1 times the features (3.6 GB per 10 min
        at 30 fps for wav2vec2-base in float32); :func:`clip_window` gathers one clip's windows at a time.
        """
        waveform = load_audio(audio_path, SAMPLE_RATE)
        duration = waveform.size / SAMPLE_RATE
        if opts.max_duration and duration > opts.max_duration:
            raise EmoError(
                f"{audio_path} is {duration:.0f} s long, over the {opts.max_duration:.0f} s limit; "
                "pass --max-duration 0 (no limit) or a larger value to generate it anyway"
            )
        num_frames = num_frames_for(duration, opts.fps)
        features = self.audio_encoder.frame_features(
            waveform, opts.fps, num_frames, cache_dir=self.cache_dir, dtype=torch.float16
        )
        proj = self.model.audio_projector.config
        if features.shape[1:] != (proj.num_layers, proj.feature_dim):
            raise EmoError(
                f"the audio encoder gives {features.shape[1]} layers x {features.shape[2]} features, the "
                f"model expects {proj.num_layers} x {proj.feature_dim}: use the wav2vec2 it was trained with"
            )
        return waveform, features

    def prepare_portrait(self, image_path: str | Path, opts: GenerationOptions):
        return prepare_portrait(image_path, size=opts.size, region=opts.region, strict=opts.strict)

    def speed_window(self, num_frames: int, speed: float) -> torch.Tensor:
        """(F, 2m+1): one constant speed per video (EMO Sec. 3.3)."""
        return torch.full((num_frames, self.model.speed_encoder.config.window), float(speed))

    @torch.no_grad()
    def encode_image(self, image: np.ndarray) -> torch.Tensor:
        pixels = torch.from_numpy(image).permute(2, 0, 1)[None].to(self.device, self.dtype) / 127.5 - 1
        return self.codec.encode(pixels)  # (1, C, h, w)

    @torch.no_grad()
    def decode(
        self, latents: torch.Tensor, chunk: int, mouth: tuple[torch.Tensor, torch.Tensor] | None = None
    ):
        """(F, C, h, w) latents -> uint8 frames (H, W, 3), a few at a time (bounds decoder memory). ``mouth``: the
        (4,) mouth box and (F,) pixels to part each frame's lips by (the mouth guide's `lip_gaps`)."""
        for start in range(0, latents.shape[0], chunk):
            images = self.codec.decode(latents[start : start + chunk])  # (chunk, 3, H, W)
            if mouth is not None:
                box, gaps = mouth
                images = open_mouth(images.float(), box, gaps[start : start + chunk])
            frames = to_uint8_frames(images)
            yield from rearrange(frames, "f c h w -> f h w c").cpu().numpy()

    # -- generation --------------------------------------------------------------------------------
    @torch.no_grad()
    def denoise_clip(
        self,
        noise: torch.Tensor,
        audio: torch.Tensor,
        speed: torch.Tensor,
        mask: torch.Tensor,
        reference: torch.Tensor,
        motion: torch.Tensor | None,
        opts: GenerationOptions,
        on_step=None,
        audio_region: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One clip: (1, f, C, h, w) noise -> its frame latents, with one ReferenceNet pass. ``audio_region``: the
        (h, w) map of where the audio guidance applies (None: everywhere)."""
        passes, weights = guidance_plan(opts.reference_guidance, opts.audio_guidance, audio_region)
        reference_variants = sorted({ref_on for ref_on, _ in passes}, reverse=True)  # True first
        images = torch.cat([reference if on else torch.zeros_like(reference) for on in reference_variants])
        motion_batch = None if motion is None else motion.expand(len(reference_variants), *motion.shape[1:])
        features = self.model.reference_features(images, motion_batch, num_motion=opts.motion_frames)
        by_variant = {on: _select(features, i) for i, on in enumerate(reference_variants)}
        batched_ref = by_variant[passes[0][0]]
        for ref_on, _ in passes[1:]:
            batched_ref = batched_ref.cat(by_variant[ref_on])
        cond = Conditioning(
            audio=torch.cat([audio if audio_on else torch.zeros_like(audio) for _, audio_on in passes]),
            speed=speed.expand(len(passes), *speed.shape[1:]),
            face_mask=mask.expand(len(passes), *mask.shape[1:]),
        )

        def denoiser(latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # every pass in one batch
            model_in = latents.expand(len(passes), *latents.shape[1:]).to(self.dtype)
            timesteps = t.reshape(1).expand(len(passes)).to(self.device)
            return combine_guidance(self.model(model_in, timesteps, cond, batched_ref).float(), weights)

        def step_done(*_) -> None:
            if on_step is not None:
                on_step()

        # (1, 1, C, h, w): with strength < 1 every frame starts from the reference (SDEdit)
        start = self.model.to_denoised(reference[:, None], reference)
        denoised = sample(denoiser, noise, opts.sampler, opts.steps, step_done, start, opts.strength,
                          self.model.prediction)  # fmt: skip
        return self.model.from_denoised(denoised, reference.float())

    def generate(
        self,
        image_path: str | Path,
        audio_path: str | Path,
        out_path: str | Path,
        opts: GenerationOptions = GenerationOptions(),
        overwrite: bool = False,
        progress: bool = True,
        callback: Callable[[GenerationProgress], None] | None = None,
    ) -> GenerationResult:
        """Write the video for ``image_path`` + ``audio_path`` to ``out_path`` (atomically).

        ``progress`` shows a terminal progress bar; ``callback`` is called after every denoising step with a
        :class:`GenerationProgress` (a web page's progress bar; an exception raised in it stops generation
        and leaves no output).
        """
        opts.validate()
        start = time.perf_counter()
        out_path = check_video_output(out_path, overwrite)  # before the long work: nothing is created yet
        # The portrait first: a portrait without a face fails before the (long) wav2vec2 pass.
        portrait = self.prepare_portrait(image_path, opts)
        waveform, features = self.prepare_audio(audio_path, opts)  # (F, L, D)
        total = features.shape[0]
        f, n = opts.clip_frames, opts.motion_frames
        m = self.model.audio_projector.config.window // 2
        clips = math.ceil(total / f)
        speed = self.speed_window(f, opts.speed)[None].to(self.device)  # (1, f, W): one speed per video
        mask = torch.from_numpy(np.ascontiguousarray(portrait.mask, dtype=np.float32))[None, None].to(
            self.device
        )
        reference = self.encode_image(portrait.image)
        h, w = reference.shape[-2:]
        mouth_strength = self.mouth_strength(opts, portrait)
        mouth_box = torch.from_numpy(portrait.mouth_box) if mouth_strength else None
        audio_region = self.audio_guidance_region(opts, portrait, h, w)
        generator = torch.Generator("cpu").manual_seed(opts.seed)

        written = 0
        motion = None  # previous clip's last n latents; the first clip gets zero motion features
        per_clip = steps_run(opts.steps, opts.strength)
        bar = tqdm(total=clips * per_clip, desc="generating", unit="step", disable=not progress)
        steps_done = 0

        def on_step(clip: int) -> None:
            nonlocal steps_done
            steps_done += 1
            bar.update(1)
            if callback is not None:
                callback(GenerationProgress(clip, clips, steps_done, clips * per_clip))

        with VideoWriter(
            out_path,
            opts.fps,
            opts.size,
            opts.size,
            audio=waveform,
            audio_rate=SAMPLE_RATE,
            overwrite=overwrite,
        ) as writer:
            for clip in range(clips):
                noise = torch.randn(1, f, self.codec.latent_channels, h, w, generator=generator).to(
                    self.device
                )
                audio = clip_window(features, clip * f, f, m)[None].to(
                    self.device, self.dtype
                )  # (1, f, 2m+1, L, D)
                latents = self.denoise_clip(
                    noise,
                    audio,
                    speed,
                    mask,
                    reference,
                    motion,
                    opts,
                    on_step=functools.partial(on_step, clip),
                    audio_region=audio_region,
                )
                motion = latents[:, -n:].to(self.dtype) if n else None
                keep = min(f, total - written)
                mouth = None  # the lips moved to the opening the audio calls for (emo.conditioning.mouth)
                if mouth_strength:
                    guide = self.mouth_guide
                    targets = guide.openings(clip_window(features, clip * f, keep, guide.audio.half_window))
                    gaps = guide.lip_gaps(latents[0, :keep], mouth_box, targets, mouth_strength, opts.size)
                    mouth = (mouth_box, gaps)
                for frame in self.decode(latents[0, :keep].to(self.dtype), opts.decode_chunk, mouth):
                    writer.write(frame)
                written += keep
                bar.set_postfix(clip=f"{clip + 1}/{clips}")
        bar.close()
        return GenerationResult(out_path, written, clips, time.perf_counter() - start)

    def audio_guidance_region(
        self, opts: GenerationOptions, portrait, height: int, width: int
    ) -> torch.Tensor | None:
        """The (height, width) latent map of where the audio guidance applies; None: the whole frame."""
        if opts.audio_guidance == 1.0 or opts.audio_guidance_region == "frame":
            return None
        if portrait.mouth_box is None:
            log.info("no face in the portrait: the audio guidance covers the whole frame")
            return None
        return torch.from_numpy(lower_face_mask(portrait.mouth_box, height, width)).to(self.device)

    def mouth_strength(self, opts: GenerationOptions, portrait) -> float:
        """How far the mouth guide moves this video's lips (0: not at all)."""
        if opts.mouth_guidance == 0:
            return 0.0
        if self.mouth_guide is None:
            if opts.mouth_guidance is None:
                return 0.0
            raise EmoError(
                "--mouth-guidance: this model has no mouth guide "
                f"({MOUTH_GUIDE}); leave the option out, or fit one with scripts/fit_mouth_guide.py"
            )
        if portrait.mouth_box is None:
            log.info("no face in the portrait: the mouth guide is off")
            return 0.0
        return FULL_MOUTH_GUIDANCE if opts.mouth_guidance is None else opts.mouth_guidance


GENERATION_DEFAULTS = "generation.json"  # in a checkpoint: the options it is meant to be run with


def model_defaults(weights: Path) -> dict:
    """The generation options a checkpoint sets for itself: ``size`` from the size it was trained at
    (``training_config.json``), anything else (``strength``, ``sampler``, ``steps``) from its ``generation.json``."""
    defaults = {}
    try:
        defaults["size"] = int(
            json.loads((Path(weights) / "training_config.json").read_text())["data"]["size"]
        )
    except (OSError, ValueError, KeyError, TypeError):
        pass
    path = Path(weights) / GENERATION_DEFAULTS
    if path.is_file():
        try:
            extra = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise EmoError(f"{path}: not readable JSON ({exc}); fix or remove it") from None
        if not isinstance(extra, dict):
            raise EmoError(f"{path}: not a JSON object of generation options; fix or remove it")
        unknown = set(extra) - set(GenerationOptions.__dataclass_fields__)
        if unknown:
            raise EmoError(f"{path}: unknown generation options {sorted(unknown)}; fix or remove it")
        defaults.update(extra)
    return defaults


def trained_audio_front_end(weights: Path, audio_encoder: str | Path | None, device):
    """The audio front-end a checkpoint was trained with: its ``audio_front_end.json`` record decides, and
    a given ``audio_encoder`` must match it. Checkpoints without a record are wav2vec2 (``wav2vec2/``)."""
    record_file = weights / FRONT_END_RECORD
    wav2vec2 = Path(audio_encoder) if audio_encoder else weights / "wav2vec2"
    if not record_file.is_file():
        if not wav2vec2.exists():
            raise EmoError(
                f"{wav2vec2} not found: pass --audio-encoder PATH (a local transformers wav2vec2 "
                "folder) or put it inside the --weights directory"
            )
        return load_audio_front_end(wav2vec2, device)
    record = read_front_end_record(record_file)
    if audio_encoder and record.get("kind") != WAV2VEC2_KIND:
        raise EmoError(
            f"--audio-encoder {audio_encoder}: this model was trained with {record.get('kind')} "
            "features, not wav2vec2; leave --audio-encoder out"
        )
    return front_end_from_record(record, wav2vec2, device)


def clip_window(features: torch.Tensor, start: int, length: int, m: int) -> torch.Tensor:
    """Audio windows of frames start .. start+length-1: (F, L, D) -> (length, 2m+1, L, D).

    Frames past the end (the last clip filled out to f frames, never written) repeat the last frame's
    window, as the whole-track window padded with its last row did.
    """
    frames = torch.arange(start, start + length).clamp(max=features.shape[0] - 1)  # (length,)
    return window(features, m, frames)  # (length, 2m+1, L, D)


def _select(features: ReferenceFeatures, index: int) -> ReferenceFeatures:
    """Batch item `index` of a batched ReferenceNet output."""
    n = features.num_motion
    motion = (
        None
        if features.motion is None
        else {k: v[index * n : (index + 1) * n] for k, v in features.motion.items()}
    )
    return ReferenceFeatures({k: v[index : index + 1] for k, v in features.spatial.items()}, motion, n)
