"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class EmoError(Exception):
    """A problem the user can fix (bad input, missing weights, bad option).

    The message is shown as-is on one line, so it should name the file or option and say how to fix it.
    """
