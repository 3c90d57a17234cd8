"""Output files written atomically, input files checked, and the disk errors that are the user's to fix."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from safetensors import SafetensorError

from emo.errors import EmoError

logger = logging.getLogger(__name__)

# The permissions a new file gets from open(): some writers (safetensors) create theirs owner-only, 0600.
_UMASK = os.umask(0)
os.umask(_UMASK)
NEW_FILE_MODE = 0o666 & ~_UMASK

AUDIO_FORMATS = "wav, mp3, m4a, flac, ogg, or the audio track of mp4/mov"

# --------------------------------------------------------------------------------------------------
# Atomic writes: one home for "temp name in the same directory, then os.replace".
# --------------------------------------------------------------------------------------------------


# Errors writing a file that the user fixes (free space, a writable place), not bugs: one line, no partial file.
USER_WRITE_ERRNOS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
}


class WriteError(EmoError):
    """The disk refused an output (full, read-only, no permission): the user's to fix, and not a property of
    the input, so a preprocessing run stops on it instead of recording the video as failed."""


def write_error(exc: OSError, path: str | os.PathLike | None) -> EmoError:
    """The one-line EmoError for an OSError of :data:`USER_WRITE_ERRNOS` raised while writing ``path``."""
    reason = USER_WRITE_ERRNOS[exc.errno]
    return WriteError(f"{reason} writing {path}" if path else f"{reason} ({exc.strerror or exc})")


def _os_errno(exc: BaseException) -> int | None:
    """The errno of an OSError, or of an OSError that safetensors' Rust writer reports in its message
    ("... (os error 28)")."""
    if isinstance(exc, OSError):
        return exc.errno
    found = re.search(r"\(os error (\d+)\)", str(exc))
    return int(found.group(1)) if found else None


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Turn a full disk, a read-only file system or a permission error inside the block into an EmoError
    naming ``path`` (the final name, not the temporary one the bytes were going to)."""
    try:
        yield
    except (OSError, SafetensorError) as exc:
        code = _os_errno(exc)
        if code in USER_WRITE_ERRNOS:
            raise write_error(OSError(code, os.strerror(code)), path) from None
        raise


def temp_sibling(path: Path) -> Path:
    # Same directory (so os.replace is a rename, not a copy) and the same suffix (so writers that pick
    # a format from the suffix, e.g. np.save or an mp4 muxer, behave as for the final name).
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}-{secrets.token_hex(4)}{path.suffix}")


def check_output(path: str | os.PathLike, overwrite: bool) -> Path:
    """Fail now (before any long work) if ``path`` cannot be written; leaves nothing behind. The one home of the
    "exists; pass --overwrite" rule."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise EmoError(f"{path} exists; pass --overwrite to replace it")
    if path.is_dir():
        raise EmoError(f"{path} is a directory; give a file name")
    existing = path.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise EmoError(f"cannot create the output folder {path.parent}: {existing} is not a folder")
    if not os.access(existing, os.W_OK):
        raise EmoError(f"cannot write {path}: folder {existing} is not writable")
    _probe_folder(existing, path)
    return path


def _probe_folder(folder: Path, path: Path) -> None:
    # os.access answers from the mode bits, and yes to root everywhere: a pseudo-filesystem such as /proc
    # or a folder a security module guards would pass it and fail only when the output is written, after
    # the long work. Creating (and at once removing) a file is the one real test.
    try:
        fd, probe = tempfile.mkstemp(prefix=".emo-write-probe-", dir=folder)
    except OSError as exc:
        raise EmoError(
            f"cannot write {path}: cannot create a file in {folder} ({exc.strerror or exc})"
        ) from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)


def prepare_output(path: str | os.PathLike, overwrite: bool) -> Path:
    """:func:`check_output`, then create the folder ``path`` goes in."""
    path = check_output(path, overwrite)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EmoError(f"cannot create the directory for {path}: {exc.strerror or exc}") from None
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed to ``path``, on error removed.

    The parent directory is created if missing. ``overwrite=False`` raises EmoError up front if ``path``
    exists. Readers never see a partial file: ``path`` is either the old file or the complete new one.
    """
    path = prepare_output(path, overwrite)
    temp = temp_sibling(path)
    try:
        with writing(path):
            yield temp
            if not temp.exists():
                raise RuntimeError(f"nothing was written to the temporary file for {path}")
            if temp.is_file():  # readable by whoever could read a file the user made (the umask's choice)
                os.chmod(temp, NEW_FILE_MODE)
            os.replace(temp, path)
    except BaseException:  # also SIGTERM (emo.termination) and Ctrl-C: no partial file is left
        with contextlib.suppress(OSError):
            temp.unlink()
        raise


def replace_folder(temp: Path, final: Path) -> None:
    """Move the finished folder ``temp`` to ``final``, replacing a folder there.

    ``os.replace`` cannot rename onto a non-empty folder, and removing the old one first would leave nothing
    at ``final`` if the rename then failed. So the old folder is renamed aside, the new one takes its name,
    and only then is the old one removed; if the second rename fails, the old folder is put back.
    """
    if not final.exists():
        os.replace(temp, final)
        return
    aside = final.with_name(f".{final.name}.old-{os.getpid()}-{secrets.token_hex(4)}")
    os.replace(final, aside)
    try:
        os.replace(temp, final)
    except BaseException:
        os.replace(aside, final)
        raise
    if aside.is_dir() and not aside.is_symlink():
        shutil.rmtree(aside, ignore_errors=True)
    else:  # a file, or a link, stood where the folder goes (--overwrite); a link's target is left alone
        aside.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, overwrite: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`); returns the path."""
    with atomic_path(path, overwrite=overwrite) as temp:
        with open(temp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


# --------------------------------------------------------------------------------------------------
# Input checks shared by the readers.
# --------------------------------------------------------------------------------------------------


def check_input(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise EmoError(f"{what} file not found: {path}")
    if not path.is_file():
        raise EmoError(f"{what} path is not a file: {path}")
    if path.stat().st_size == 0:
        raise EmoError(f"{what} file is empty (0 bytes): {path}")
    return path


def open_container(path: Path, what: str):
    import av

    try:
        return av.open(str(path), mode="r")
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise EmoError(
            f"cannot read {what} {path}: not a readable media file ({decode_reason(exc)}); "
            f"supported: {AUDIO_FORMATS if what == 'audio' else 'mp4, mov, mkv, webm'}"
        ) from None


def decode_reason(exc: BaseException) -> str:
    strerror = getattr(exc, "strerror", None)
    if strerror:  # FFmpeg/OS errors: the bare reason, without the errno and the path repeated
        return str(strerror).strip()
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
