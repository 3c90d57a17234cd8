"""All media I/O of the project: images, audio, video in and out, and atomic file writes.

Everything goes through PyAV (bundled FFmpeg; there is no system ffmpeg) and Pillow, so the rest of the
code never touches a container format. Reading never loads a whole video: frames are streamed. Writing
never leaves a half-written file behind: outputs go to a temporary name in the same directory and are
renamed into place (``os.replace``, atomic on one filesystem) only when complete.

Every problem a user can fix (missing, empty, corrupt or unsupported file, unwritable output, an output
that exists, a full disk) raises :class:`~emo.errors.EmoError` with a one-line message naming the file.

The package's modules: ``files`` (atomic writes, input checks, disk errors), ``images``, ``audio``, ``video``.
Callers import from ``emo.media``.
"""

from emo.media.audio import load_audio
from emo.media.files import (
    AUDIO_FORMATS,
    USER_WRITE_ERRNOS,
    WriteError,
    atomic_path,
    atomic_write_bytes,
    check_input,
    check_output,
    replace_folder,
    write_error,
    writing,
)
from emo.media.images import image_to_rgb, load_image, save_image
from emo.media.video import (
    WRITTEN_VIDEO_SUFFIXES,
    VideoInfo,
    VideoWriter,
    check_video_output,
    iter_video_frames,
    num_frames_for,
    probe_video,
    write_video,
)

__all__ = [
    "AUDIO_FORMATS",
    "USER_WRITE_ERRNOS",
    "VideoInfo",
    "VideoWriter",
    "WRITTEN_VIDEO_SUFFIXES",
    "WriteError",
    "atomic_path",
    "atomic_write_bytes",
    "check_input",
    "check_output",
    "check_video_output",
    "image_to_rgb",
    "iter_video_frames",
    "load_audio",
    "load_image",
    "num_frames_for",
    "probe_video",
    "replace_folder",
    "save_image",
    "write_error",
    "write_video",
    "writing",
]
