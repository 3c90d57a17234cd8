"""The audio front-end: which features of the audio the network hears (EMO.md §2 "Audio encoder", §8).

Two front-ends share one contract, ``frame_features(waveform_16k, fps, num_frames) -> (F, L, D)``:
wav2vec2 (:class:`~emo.conditioning.audio_features.AudioEncoder`, a local weights folder) and the weight-free
log-mel front-end (:class:`~emo.conditioning.log_mel.LogMelFrontEnd`). A front-end is named on the command
line by a *spec*: ``log-mel`` or the path of a wav2vec2 folder. What a dataset or a checkpoint records is
its *record* (:func:`front_end_record`): the kind and the settings or weights hash, so preprocessing,
training and generation can refuse to mix features of different front-ends.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from emo.conditioning.audio_features import AudioEncoder
from emo.conditioning.log_mel import KIND as LOG_MEL_KIND
from emo.conditioning.log_mel import LogMelFrontEnd
from emo.errors import EmoError

LOG_MEL = "log-mel"  # the spec of the weight-free front-end
FRONT_END_RECORD = "audio_front_end.json"  # in an exported checkpoint: the record of its front-end
WAV2VEC2_KIND = "wav2vec2"


def is_log_mel(spec: str | os.PathLike | None) -> bool:
    return str(spec) == LOG_MEL


def load_audio_front_end(spec: str | os.PathLike, device: str = "cpu"):
    """The front-end a spec names: ``log-mel`` or a local wav2vec2 folder."""
    if is_log_mel(spec):
        return LogMelFrontEnd()
    return AudioEncoder.from_pretrained(spec, device=device)


def audio_front_end_id(spec: str | os.PathLike) -> str:
    """What identifies a front-end in dataset.json: log-mel's settings hash, or a wav2vec2 folder's
    weights hash (not its path: a moved folder is the same encoder, other weights in its place are not)."""
    return LogMelFrontEnd().fingerprint() if is_log_mel(spec) else wav2vec2_id(spec)


def front_end_record(spec: str | os.PathLike) -> dict:
    """What a dataset or checkpoint records of the front-end named by ``spec``."""
    if is_log_mel(spec):
        return {**LogMelFrontEnd().to_dict(), "id": audio_front_end_id(spec)}
    return {"kind": WAV2VEC2_KIND, "id": wav2vec2_id(spec)}


def record_from_id(front_end_id: str) -> dict:
    """The record of the front-end a dataset.json id names (log-mel: its settings are this code's)."""
    if front_end_id == LogMelFrontEnd().fingerprint():
        return front_end_record(LOG_MEL)
    return {"kind": WAV2VEC2_KIND, "id": front_end_id}


def read_front_end_record(path: str | os.PathLike) -> dict | None:
    """A checkpoint's ``audio_front_end.json`` (None: there is none)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EmoError(f"{path} is not valid JSON ({exc}); export the checkpoint again") from None
    if not isinstance(record, dict) or "kind" not in record:
        raise EmoError(f"{path} is not an audio front-end record (no 'kind'); export the checkpoint again")
    return record


def front_end_from_record(record: dict, wav2vec2: str | os.PathLike | None, device: str = "cpu"):
    """The front-end a checkpoint was trained with. A wav2vec2 record needs its weights folder, which must
    be the recorded one (by hash); a log-mel record rebuilds the front-end from its settings."""
    kind = record.get("kind")
    if kind == LOG_MEL_KIND:
        settings = {k: v for k, v in record.items() if k != "id"}
        return LogMelFrontEnd.from_dict(settings)
    if kind != WAV2VEC2_KIND:
        raise EmoError(
            f"unknown audio front-end kind {kind!r} in the checkpoint; known: {LOG_MEL_KIND}, {WAV2VEC2_KIND}"
        )
    if wav2vec2 is None or not Path(wav2vec2).exists():
        raise EmoError(
            "the model was trained with wav2vec2 features: pass --audio-encoder PATH (the wav2vec2 "
            "folder it was trained with) or put it in the --weights directory as wav2vec2/"
        )
    if wav2vec2_id(wav2vec2) != record["id"]:
        raise EmoError(
            f"--audio-encoder {wav2vec2} is not the wav2vec2 this model was trained with "
            f"({record['id'][:15]}...); give the same weights"
        )
    return load_audio_front_end(wav2vec2, device)


def wav2vec2_id(path: str | os.PathLike) -> str:
    """What identifies a wav2vec2 folder: a SHA-256 of its config and weights.

    Not its path: a moved or copied folder is the same encoder, other weights in the same place are not.
    """
    path = Path(path)
    if not (path / "config.json").is_file():
        raise EmoError(
            f"--audio-encoder {path}: no config.json there; give a local wav2vec2 folder or {LOG_MEL}"
        )
    digest = hashlib.sha256()
    for name in ("config.json", "preprocessor_config.json"):  # the latter holds do_normalize
        if (path / name).is_file():
            try:
                settings = json.loads((path / name).read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise EmoError(f"cannot read {path / name}: not valid JSON ({exc})") from None
            settings.pop("transformers_version", None)  # re-saving with another version changes nothing
            digest.update(json.dumps(settings, sort_keys=True).encode())
    # The files transformers loads the weights from (safetensors first, as it does).
    for weights in sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin")):
        digest.update(weights.name.encode())
        with open(weights, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"
