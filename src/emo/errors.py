"""The one exception type the CLI turns into a one-line message and a non-zero exit, and the errors a damaged
weights file raises (which every loader turns into one)."""

import json

from safetensors import SafetensorError


class EmoError(Exception):
    """A problem the user can fix (bad input, missing weights, bad option).

    The message is shown as-is on one line, so it should name the file or option and say how to fix it.
    """


# What loading a damaged or wrong weights file raises (torch, safetensors, diffusers, transformers): every
# loader turns these into an EmoError naming the file.
WEIGHT_LOAD_ERRORS = (OSError, ValueError, KeyError, RuntimeError, json.JSONDecodeError, SafetensorError)
