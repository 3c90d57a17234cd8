"""EMO: audio-driven portrait video diffusion (Emote Portrait Alive, arXiv 2402.17485)."""

__version__ = "0.1.0"
