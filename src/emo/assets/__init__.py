"""Files shipped inside the package (each with its origin in SOURCES.md): the face template, the media `emo
bench` runs on, the TAEF2 codec and the trained models `emo generate --model` names."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from emo.errors import EmoError

SHIPPED_MODELS = ("small",)  # trained models: emo/assets/<name>/, an `emo train export` folder with MODEL.md


def shipped_model_dir(name: str) -> Path:
    """The folder of a trained model shipped in the package, e.g. ``small``."""
    if name not in SHIPPED_MODELS:
        raise EmoError(f"--model {name}: no such shipped model; choose one of {', '.join(SHIPPED_MODELS)}")
    path = Path(str(resources.files("emo.assets").joinpath(name)))
    if not (path / "emo.json").is_file():
        raise EmoError(
            f"no trained {name} model is shipped yet ({path}): pass --weights DIR or --preset tiny"
        )
    return path
