"""Audio features: wav2vec2 hidden states of all layers, per video frame (EMO paper Sec. 3.2; EMO.md §1, §2).

Pipeline: 16 kHz mono waveform -> zero-mean unit-variance normalisation (what wav2vec2-base-960h's
feature extractor does, ``do_normalize=True``) -> ``Wav2Vec2Model`` with ``output_hidden_states`` ->
(T50, L, D) at 50 Hz (L = layers + 1, the CNN-projected input included) -> linear interpolation in time
to the video frame rate -> (F, L, D), F = ceil(duration * fps).

Long audio runs in chunks so memory stays bounded whatever the length: the 50 Hz frame grid is cut into
cores of ``chunk_seconds``; each core goes through the transformer together with ``context_seconds`` of
neighbouring frames on both sides, and only the core's frames are kept (overlap-discard stitching).
The CNN front-end is made exactly chunk-independent: chunk starts are aligned to its 320-sample hop,
the GroupNorm of its first layer uses statistics of the whole waveform (computed in closed form), and
each frame's CNN features are computed once and reused as the next chunk's context. Only attention
across chunk edges differs from encoding everything at once (a test bounds the difference).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from emo.errors import WEIGHT_LOAD_ERRORS, EmoError
from emo.media import atomic_path, num_frames_for

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000  # wav2vec2 is trained on 16 kHz audio
HOP = 320  # samples between 50 Hz frames (product of the CNN strides 5·2^6)
RECEPTIVE_FIELD = 400  # samples seen by one 50 Hz frame (CNN kernels 10,3,3,3,3,2,2 with those strides)
FRAME_RATE = SAMPLE_RATE / HOP  # 50 Hz


@dataclass(frozen=True)
class ChunkConfig:
    """How long audio is cut for bounded memory."""

    # Core length of one chunk. Attention cost per frame grows with the chunk, context overhead shrinks;
    # 20 s (1000 frames) is near the minimum of the two for wav2vec2-base.
    chunk_seconds: float = 20.0
    # Audio encoded on each side of a core and then discarded; more than the ±1.28 s reach of the
    # positional convolution (kernel 128 frames), so every kept frame sees real neighbours.
    context_seconds: float = 1.5


def _num_frames_50hz(num_samples: int) -> int:
    return (num_samples - RECEPTIVE_FIELD) // HOP + 1 if num_samples >= RECEPTIVE_FIELD else 0


class AudioEncoder:
    """A frozen ``transformers.Wav2Vec2Model`` that turns waveforms into all-layer features.

    Load it with :meth:`from_pretrained` from a local transformers folder (``config.json`` +
    ``model.safetensors``), e.g. a downloaded ``facebook/wav2vec2-base-960h``.

    Attributes:
        identity: sha256 over the config and the weights; cache keys use it so features from another
            model are never reused.
        num_layers: hidden states per frame (transformer layers + 1; 13 for base).
        hidden_size: feature width D (768 for base).
    """

    def __init__(self, model, do_normalize: bool = True, chunk: ChunkConfig = ChunkConfig()):
        self.model = model.eval().requires_grad_(False)
        self.do_normalize = do_normalize
        self.chunk = chunk
        self.num_layers = model.config.num_hidden_layers + 1
        self.hidden_size = model.config.hidden_size
        self._identity: str | None = None

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        chunk: ChunkConfig = ChunkConfig(),
    ) -> AudioEncoder:
        """Load a Wav2Vec2Model from a local folder; EmoError naming ``path`` if it is missing or invalid.

        ``do_normalize`` is read from ``preprocessor_config.json`` when the folder has one (True otherwise,
        as for wav2vec2-base-960h).
        """
        # Here, not at the top: the wav2vec2 modeling code takes seconds to import, and log-mel models,
        # which import this module through emo.conditioning.audio_front_end, never need it.
        from transformers import Wav2Vec2Model

        path = Path(path)
        if not (path / "config.json").is_file():
            raise EmoError(
                f"no wav2vec2 model at {path}: expected a transformers folder with config.json and "
                "model.safetensors (e.g. facebook/wav2vec2-base-960h downloaded with save_pretrained)"
            )
        try:
            model = Wav2Vec2Model.from_pretrained(path, local_files_only=True, torch_dtype=dtype)
        except WEIGHT_LOAD_ERRORS as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise EmoError(f"cannot load the wav2vec2 model at {path}: {first_line}") from None
        do_normalize = True
        preprocessor = path / "preprocessor_config.json"
        if preprocessor.is_file():
            try:
                do_normalize = bool(json.loads(preprocessor.read_text()).get("do_normalize", True))
            except json.JSONDecodeError:
                raise EmoError(f"cannot read {preprocessor}: not valid JSON") from None
        return cls(model.to(device), do_normalize=do_normalize, chunk=chunk)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def identity(self) -> str:
        """Stable hash of the config and every weight (computed once, ~0.3 s for base)."""
        if self._identity is None:
            digest = hashlib.sha256()
            digest.update(self.model.config.to_json_string(use_diff=False).encode())
            digest.update(f"do_normalize={self.do_normalize}".encode())
            for name, tensor in sorted(self.model.state_dict().items()):
                digest.update(name.encode())
                digest.update(str(tensor.dtype).encode())
                digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
            self._identity = digest.hexdigest()
        return self._identity

    # ----------------------------------------------------------------------------------------------

    def _prepare(self, waveform: np.ndarray) -> torch.Tensor:
        waveform = np.asarray(waveform, dtype=np.float32).reshape(-1)
        if waveform.size == 0:
            raise ValueError("waveform is empty")
        x = torch.from_numpy(waveform)
        if self.do_normalize:
            # Normalise over the WHOLE waveform (as the feature extractor does), not per chunk, so that
            # chunking does not change the input scale. Silence stays zeros. Sums in float64, data in
            # float32: no float64 copy of a long track.
            mean = x.sum(dtype=torch.float64) / x.numel()
            centred = x - mean.float()
            var = centred.square().sum(dtype=torch.float64) / x.numel()
            x = centred.div_(float(torch.sqrt(var + 1e-7)))
        if x.numel() < RECEPTIVE_FIELD:  # too short for one 50 Hz frame: pad with silence
            x = torch.nn.functional.pad(x, (0, RECEPTIVE_FIELD - x.numel()))
        return x  # (N,)

    @torch.inference_mode()
    def _conv0_folded(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The first CNN layer's conv and GroupNorm as one conv (weight (C, 1, k), bias (C,)), normalising
        with the per-channel mean and variance of its output over the WHOLE waveform.

        wav2vec2-base's first conv layer ends in a GroupNorm with one group per channel, which normalises
        over time: run per chunk it would use per-chunk statistics and chunk boundaries would show. We
        compute the global statistics once and apply them in every chunk, which makes the CNN features
        exactly independent of chunking. The conv is linear, h_c(t) = w_c·x_t + b_c over the input
        windows x_t, so mean and variance follow from the mean m and second moment S = E[x_t x_tᵀ] of
        the windows (k×k, k = 10): E[h_c] = w_c·m + b_c, E[h_c²] = w_cᵀ S w_c + 2 b_c w_c·m + b_c².
        No (C, T) activation is ever formed for them.
        """
        conv = self.model.feature_extractor.conv_layers[0].conv
        kernel, stride = conv.kernel_size[0], conv.stride[0]
        windows = x.unfold(0, kernel, stride)  # (T0, k), a view
        count = windows.shape[0]
        first = torch.zeros(kernel, dtype=torch.float64)
        second = torch.zeros(kernel, kernel, dtype=torch.float64)
        for start in range(0, count, 1_000_000):  # ~80 MB of float64 windows at a time
            block = windows[start : start + 1_000_000].double()
            first += block.sum(0)
            second += block.T @ block
        m, s = first / count, second / count
        w = conv.weight.detach().double().cpu()[:, 0]  # (C, k)
        b = (
            conv.bias.detach().double().cpu()
            if conv.bias is not None
            else torch.zeros(w.shape[0], dtype=torch.float64)
        )
        mean = w @ m + b
        square = torch.einsum("ck,kl,cl->c", w, s, w) + 2 * b * (w @ m) + b * b
        var = (square - mean * mean).clamp_min(0)
        # Fold normalisation and the norm's affine into the conv: gamma (w x + b - mean) / std + beta.
        norm = self.model.feature_extractor.conv_layers[0].layer_norm
        scale = norm.weight.detach().double().cpu() / torch.sqrt(var + norm.eps)  # (C,)
        folded_weight = (w * scale[:, None])[:, None]  # (C, 1, k)
        folded_bias = (b - mean) * scale + norm.bias.detach().double().cpu()
        return folded_weight.to(self.device, self.dtype), folded_bias.to(self.device, self.dtype)

    @torch.inference_mode()
    def _cnn(self, segment: torch.Tensor, folded) -> torch.Tensor:
        layers = self.model.feature_extractor.conv_layers
        h = segment[None, None].to(self.device, self.dtype)  # (1, 1, n)
        if folded is None:  # layer-norm CNN (large models): already local, chunking is exact
            return self.model.feature_extractor(h[:, 0])  # (1, C, t)
        first = layers[0]
        weight, bias = folded
        # conv -> normalise with the global statistics -> affine, folded into one conv: the (C, t0) output at
        # 3.2 kHz is the largest tensor of the whole encoder, and each elementwise pass over it costs.
        h = first.activation(torch.nn.functional.conv1d(h, weight, bias, stride=first.conv.stride))
        for layer in layers[1:]:
            h = layer(h)
        return h  # (1, C, t)

    @torch.inference_mode()
    def _transformer(self, cnn_features: torch.Tensor) -> torch.Tensor:
        """All hidden states (input of the first layer, then each layer's output), like
        ``Wav2Vec2Model(..., output_hidden_states=True).hidden_states``."""
        hidden, _ = self.model.feature_projection(cnn_features.transpose(1, 2))  # (1, t, D)
        captured: list[torch.Tensor] = []
        layers = self.model.encoder.layers

        def keep_input(module, args, kwargs):
            captured.append(args[0] if args else kwargs["hidden_states"])

        def keep_output(module, args, output):
            captured.append(output[0] if isinstance(output, tuple) else output)

        handles = [layers[0].register_forward_pre_hook(keep_input, with_kwargs=True)]
        handles += [layer.register_forward_hook(keep_output) for layer in layers]
        try:
            self.model.encoder(hidden)
        finally:
            for handle in handles:
                handle.remove()
        return torch.stack(captured, dim=2)[0].float().cpu()  # (t, L, D)

    def iter_encode(self, waveform_16k: np.ndarray) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield ``(first_frame, features (t, L, D))`` chunks of the 50 Hz features, in order.

        Memory is bounded by one chunk whatever the audio length; consumers that stream (to disk, or to
        the frame rate as :meth:`frame_features` does) never hold the whole (T50, L, D) array. The CNN
        runs once per frame (its context frames are kept for the next chunk); only the transformer
        sees the context twice.
        """
        x = self._prepare(waveform_16k)
        folded = self._conv0_folded(x) if self.model.config.feat_extract_norm == "group" else None
        total = _num_frames_50hz(x.numel())
        core = max(1, int(round(self.chunk.chunk_seconds * FRAME_RATE)))
        context = max(0, int(round(self.chunk.context_seconds * FRAME_RATE)))
        cnn = torch.empty(
            1, self.model.config.conv_dim[-1], 0, dtype=self.dtype, device=self.device
        )  # (1, C, t)
        cnn_start = 0  # frame index of cnn[..., 0]
        for c0 in range(0, total, core):
            c1 = min(total, c0 + core)
            f0, f1 = max(0, c0 - context), min(total, c1 + context)
            computed = cnn_start + cnn.shape[-1]
            if f1 > computed:
                # Frames computed..f1-1 need samples [HOP·computed, HOP·(f1-1) + RECEPTIVE_FIELD).
                segment = x[HOP * computed : HOP * (f1 - 1) + RECEPTIVE_FIELD]
                cnn = torch.cat([cnn, self._cnn(segment, folded)], dim=-1)
            cnn, cnn_start = cnn[..., f0 - cnn_start :], f0  # drop frames no later chunk needs
            features = self._transformer(cnn[..., : f1 - f0])  # (f1 - f0, L, D)
            yield c0, features[c0 - f0 : c1 - f0]

    def encode(self, waveform_16k: np.ndarray) -> torch.Tensor:
        """All hidden states at 50 Hz: (T50, L, D), float32 on CPU, chunked and stitched."""
        return torch.cat([features for _, features in self.iter_encode(waveform_16k)], dim=0)

    def frame_features(
        self,
        waveform_16k: np.ndarray,
        fps: float,
        num_frames: int | None = None,
        cache_dir: str | os.PathLike | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Features per video frame: (F, L, D) with F = ceil(duration · fps) unless ``num_frames`` is given.

        Video frame f (centre time (f + 0.5)/fps) takes the linear interpolation of the two 50 Hz frames
        around it (50 Hz frame j is centred at (320 j + 200)/16000 s), clamped at the ends. Computed
        chunk by chunk, so only the output is proportional to the audio length.

        With ``cache_dir``, results are stored as safetensors keyed by the audio samples, the encoder
        identity, fps, num_frames, chunking and dtype, and reused on the next call.
        """
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        waveform = np.ascontiguousarray(np.asarray(waveform_16k, dtype=np.float32).reshape(-1))
        if num_frames is None:
            num_frames = num_frames_for(waveform.size / SAMPLE_RATE, fps)
        num_frames = max(1, int(num_frames))
        cache_path = None
        if cache_dir is not None:
            cache_path = Path(cache_dir) / f"{self._cache_key(waveform, fps, num_frames, dtype)}.safetensors"
            if cache_path.is_file():
                try:
                    cached = load_file(cache_path)["features"]
                    logger.debug("audio features from cache %s", cache_path)
                    return cached
                except Exception as exc:  # a damaged cache entry is recomputed, not fatal
                    logger.warning("ignoring unreadable audio feature cache %s (%s)", cache_path, exc)

        features = self._interpolated(waveform, fps, num_frames, dtype)
        if cache_path is not None:
            with atomic_path(cache_path) as temp:
                save_file({"features": features}, str(temp))
        return features

    def _interpolated(
        self, waveform: np.ndarray, fps: float, num_frames: int, dtype: torch.dtype
    ) -> torch.Tensor:
        out = torch.empty(num_frames, self.num_layers, self.hidden_size, dtype=dtype)  # (F, L, D)
        total = _num_frames_50hz(max(waveform.size, RECEPTIVE_FIELD))
        # Position of each video frame centre on the 50 Hz frame grid.
        centres = (torch.arange(num_frames, dtype=torch.float64) + 0.5) / fps
        positions = ((centres * SAMPLE_RATE - RECEPTIVE_FIELD / 2) / HOP).clamp(0, total - 1)  # (F,)
        done = 0  # video frames written so far
        previous = None  # last 50 Hz frame of the previous chunk, (1, L, D)
        for first, chunk in self.iter_encode(waveform):
            last = first + chunk.shape[0] - 1
            # Frames whose left neighbour is in the previous chunk need its last frame too.
            extended = chunk if previous is None else torch.cat([previous, chunk], dim=0)
            offset = first if previous is None else first - 1
            end = done
            while end < num_frames and positions[end] <= last:
                end += 1
            if end > done:
                p = positions[done:end] - offset
                lo = p.floor().long().clamp(0, extended.shape[0] - 1)
                hi = (lo + 1).clamp(max=extended.shape[0] - 1)
                w = (p - lo).float()[:, None, None]
                out[done:end] = (extended[lo] * (1 - w) + extended[hi] * w).to(dtype)
                done = end
            previous = chunk[-1:]
        return out

    def _cache_key(self, waveform: np.ndarray, fps: float, num_frames: int, dtype: torch.dtype) -> str:
        digest = hashlib.sha256()
        digest.update(hashlib.sha256(waveform.tobytes()).digest())
        digest.update(
            json.dumps(
                {
                    "encoder": self.identity,
                    "fps": float(fps),
                    "num_frames": num_frames,
                    "chunk": [self.chunk.chunk_seconds, self.chunk.context_seconds],
                    "dtype": str(dtype),
                    "version": 1,  # bump when the feature computation changes
                },
                sort_keys=True,
            ).encode()
        )
        return digest.hexdigest()
