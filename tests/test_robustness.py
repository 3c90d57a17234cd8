"""What users and clusters do to a running command: signals, a full disk, tiny faces (issue 13).

Signals are real signals, sent by the process to itself (or by a thread of it) at a chosen moment of the
work, through a small wrapper around `emo.cli.main`: no sleeps, no races with the work finishing first.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from emo.errors import EmoError
from emo.media import VideoWriter, atomic_write_bytes, iter_video_frames, load_audio, write_video

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
PORTRAIT = ROOT / "examples" / "portrait.jpg"
SPEECH = ROOT / "examples" / "speech.wav"
FAST = ["--preset", "tiny", "--steps", "1", "--size", "64", "--fps", "10", "--quiet", "--no-cache"]


@pytest.fixture(autouse=True)
def fresh_process_sigint():
    """Ctrl-C as a fresh `emo` process has it: Python's KeyboardInterrupt handler. This pytest process has
    imported many libraries by now, and in one full CI run SIGINT did nothing here (exit 0), while the test
    passed alone and after test_generate; the handler is set back afterwards."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def signal_at(monkeypatch, owner, name: str, signum: int, before: bool = False, when=None) -> None:
    """Make ``owner.name(...)`` send ``signum`` to this process once it has returned (or, ``before``, as it
    is called): a chosen moment of the work. ``when(*args)`` picks the call (default: the first one)."""
    original = getattr(owner, name)
    sent = []

    def then_signal(*args, **kwargs):
        send = not sent and (when is None or when(*args))
        if send and before:
            sent.append(os.kill(os.getpid(), signum))
        result = original(*args, **kwargs)
        if send and not before:
            sent.append(os.kill(os.getpid(), signum))
        return result

    monkeypatch.setattr(owner, name, then_signal)


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def assert_stopped(code: int, err: str, signum: int) -> None:
    name = signal.Signals(signum).name
    expected = (
        (130, "emo: interrupted") if signum == signal.SIGINT else (128 + signum, f"emo: terminated ({name})")
    )
    lines = err.strip().splitlines()
    assert (code, lines[-1] if lines else "") == expected, err[-2000:]
    assert "Traceback" not in err


@pytest.fixture(scope="module")
def short_audio(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("audio") / "speech_1.5s.wav"
    sf.write(path, load_audio(SPEECH)[: int(1.5 * 16000)], 16000)
    return path


# -- signals ------------------------------------------------------------------------------------------
def test_generate_stopped_by_sigterm_leaves_no_file(short_audio, tmp_path, monkeypatch, capsys):
    from emo.cli import main

    signum = signal.SIGTERM

    temporary = []

    def renaming_the_video(source, target):
        temporary.append(Path(source))  # the complete .video.tmp-<pid>-<hex>.mp4 SIGTERM used to leave behind
        return Path(source).name.startswith(".video.tmp-") and Path(source).is_file()

    # x264 holds frames back for its lookahead, so a short video's file is written at the very end: stop there.
    signal_at(monkeypatch, os, "replace", signum, before=True, when=renaming_the_video)
    out_dir = tmp_path / "out"
    code = main(
        [
            "generate",
            *FAST,
            "--image",
            str(PORTRAIT),
            "--audio",
            str(short_audio),
            "--out",
            str(out_dir / "video.mp4"),
        ]
    )
    assert_stopped(code, capsys.readouterr().err, signum)
    assert temporary and files_under(out_dir) == []
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # main() put the handlers back


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda s: s.name)
def test_evaluate_stopped_while_writing_the_report_leaves_no_file(signum, tmp_path, monkeypatch, capsys):
    from emo.cli import main

    frames = [f for _, f in zip(range(8), iter_video_frames(DATA / "hdtf_speech_256_4s.mp4"), strict=False)]
    for folder in ("generated", "reference"):
        write_video(tmp_path / folder / "a.mp4", frames, 25)
    signal_at(monkeypatch, os, "fsync", signum)  # the report's bytes are in its temporary file
    code = main(
        [
            "evaluate",
            "--generated",
            str(tmp_path / "generated"),
            "--reference",
            str(tmp_path / "reference"),
            "--out",
            str(tmp_path / "report" / "r.json"),
            "--no-progress",
        ]
    )
    assert_stopped(code, capsys.readouterr().err, signum)
    assert files_under(tmp_path / "report") == []


def test_train_export_stopped_leaves_no_folder(tmp_path, monkeypatch, capsys):
    import shutil

    from emo.cli import main
    from emo.tiny import save_tiny_weights

    weights = save_tiny_weights(tmp_path / "weights")
    signal_at(monkeypatch, shutil, "copytree", signal.SIGTERM)  # the temporary folder has network + VAE
    code = main(
        [
            "train",
            "export",
            str(weights),
            "--out",
            str(tmp_path / "export" / "w"),
            "--vae",
            str(weights / "vae"),
        ]
    )
    assert_stopped(code, capsys.readouterr().err, signal.SIGTERM)
    assert files_under(tmp_path / "export") == []


def test_preprocess_stopped_removes_its_work_and_its_workers(tmp_path, capsys):
    """SIGTERM to the main process alone (as `timeout` and `docker stop` send it) while a worker process
    writes clips: the worker is stopped too and its temporary folder removed."""
    import multiprocessing
    import threading
    import time

    from emo.cli import main

    out, workers = tmp_path / "dataset", []

    def signal_when_a_worker_writes_clips():
        while not any(out.glob("tmp/*/*")):
            time.sleep(0.02)
        workers.extend(multiprocessing.active_children())
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=signal_when_a_worker_writes_clips, daemon=True).start()
    code = main(
        [
            "preprocess",
            str(DATA / "hdtf_speech_256_4s.mp4"),
            "--out",
            str(out),
            "--size",
            "64",
            "--min-clip",
            "1",
        ]
    )
    assert_stopped(code, capsys.readouterr().err, signal.SIGTERM)
    assert workers and not any(w.is_alive() for w in workers)
    leftovers = [p for p in files_under(out) if p.startswith(("tmp/", "videos/")) or ".tmp-" in p]
    assert leftovers == [], leftovers


# -- a full disk --------------------------------------------------------------------------------------
@pytest.fixture()
def small_disk(tmp_path):
    """A 1 MiB tmpfs (root and a kernel that allows mounting it), else the test is skipped."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("cannot mount a tmpfs here (not root?); test_write_errors_* inject the errors instead")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave: int = 8192) -> None:
    """Fill ``disk`` up to ``leave`` bytes (a header fits, a video or a report does not)."""
    stats = os.statvfs(disk)
    with open(disk / "filler", "wb") as f:
        f.write(b"\0" * max(0, stats.f_bavail * stats.f_frsize - leave))


def test_a_video_on_a_full_disk_is_a_one_line_error_and_no_file(small_disk):
    fill(small_disk)
    out = small_disk / "video.mp4"
    noise = np.random.default_rng(0).integers(0, 256, (20, 128, 128, 3), dtype=np.uint8)  # incompressible
    with pytest.raises(EmoError, match=f"^no space left on device writing {out}$"):
        write_video(out, noise, 10)
    assert files_under(small_disk) == ["filler"]


def test_evaluate_on_a_full_disk_is_a_one_line_error_and_no_file(small_disk, tmp_path, capsys):
    from emo.cli import main

    frames = [f for _, f in zip(range(8), iter_video_frames(DATA / "hdtf_speech_256_4s.mp4"), strict=False)]
    for folder in ("generated", "reference"):
        write_video(tmp_path / folder / "a.mp4", frames, 25)
    fill(small_disk, leave=0)
    out = small_disk / "r.json"
    code = main(
        [
            "evaluate",
            "--generated",
            str(tmp_path / "generated"),
            "--reference",
            str(tmp_path / "reference"),
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert (code, err.strip().splitlines()[-1]) == (
        2,
        f"emo: error: no space left on device writing {out}",
    ), err
    assert files_under(small_disk) == ["filler"]


@pytest.mark.parametrize(
    "code, message",
    [
        (errno.ENOSPC, "no space left on device"),
        (errno.EDQUOT, "disk quota exceeded"),
        (errno.EROFS, "read-only file system"),
        (errno.EACCES, "permission denied"),
    ],
)
def test_write_errors_name_the_file_and_leave_nothing(code, message, tmp_path, monkeypatch):
    def failing_fsync(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", failing_fsync)
    target = tmp_path / "out" / "report.json"
    with pytest.raises(EmoError, match=f"^{message} writing {target}$"):
        atomic_write_bytes(target, b"{}")
    assert files_under(tmp_path / "out") == []


def test_write_errors_in_the_video_writer_name_the_output(tmp_path):
    class FullDisk:
        """The writer's container, with a disk that fills up at the second frame."""

        def __init__(self, container):
            self.container, self.muxed = container, 0

        def mux(self, packets):
            self.muxed += 1
            if self.muxed > 1:
                raise OSError(errno.ENOSPC, "No space left on device", str(writer._temp))
            return self.container.mux(packets)

        def close(self):
            self.container.close()

    out = tmp_path / "video.mp4"
    frame = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(EmoError, match=f"^no space left on device writing {out}$"):
        with VideoWriter(out, fps=10, width=32, height=32) as writer:
            writer._container = FullDisk(writer._container)
            for _ in range(30):
                writer.write(frame)
    assert files_under(tmp_path) == []


def test_cli_turns_any_full_disk_into_a_one_line_error(monkeypatch, capsys):
    """Writers outside emo.media (tensorboard, torch.save...) raise a plain OSError: emo says it in one line."""
    from emo.cli import main
    from emo.training import export

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/runs/w/model.safetensors")

    monkeypatch.setattr(export, "export", full)
    assert main(["train", "export", "run", "--out", "w"]) == 2
    assert (
        capsys.readouterr().err
        == "emo: error: no space left on device writing /data/runs/w/model.safetensors\n"
    )
    monkeypatch.setattr(
        export, "export", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error"))
    )
    assert main(["train", "export", "run", "--out", "w"]) == 1  # not the user's to fix: an internal error
    assert "emo: internal error: OSError" in capsys.readouterr().err


# -- tiny faces ---------------------------------------------------------------------------------------
def test_a_tiny_face_is_used_with_a_warning_giving_its_size(tmp_path, caplog):
    from emo.conditioning.face import prepare_portrait

    small = Image.open(PORTRAIT).convert("RGB").resize((120, 120), Image.LANCZOS)
    canvas = Image.new("RGB", (480, 480), (255, 255, 255))
    canvas.paste(small, (180, 120))  # a small face in a large photo: the crop is upscaled ~5x
    canvas.save(tmp_path / "far.png")
    with caplog.at_level(logging.WARNING, logger="emo.conditioning.face.portrait"):
        portrait = prepare_portrait(tmp_path / "far.png", size=512)
    assert portrait.face_box is not None
    (record,) = [r for r in caplog.records if "px" in r.getMessage()]
    face = portrait.observation.box
    assert f"only {face.width:.0f}x{face.height:.0f} px" in record.getMessage() and face.height < 64
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="emo.conditioning.face.portrait"):
        prepare_portrait(PORTRAIT, size=512)
    assert not [r for r in caplog.records if "px" in r.getMessage()]


def test_safetensors_on_a_full_disk_is_a_write_error_and_leaves_nothing(small_disk):
    import torch
    from safetensors.torch import save_file

    from emo.media import WriteError, atomic_path, writing

    out = small_disk / "features.safetensors"
    with pytest.raises(WriteError, match=f"^no space left on device writing {out}$"):
        with writing(out), atomic_path(out) as temp:
            save_file({"features": torch.zeros(600_000)}, str(temp))  # 2.4 MB into 1 MiB
    assert list(small_disk.iterdir()) == []


def test_atomic_files_get_the_umask_permissions_whatever_the_writer(tmp_path):
    """safetensors creates its files owner-only (0600); a saved model file must be as readable as any file
    the user makes."""
    import torch
    from safetensors.torch import save_file

    from emo.media import atomic_path

    umask = os.umask(0)
    os.umask(umask)
    out = tmp_path / "weights.safetensors"
    with atomic_path(out) as temp:
        save_file({"w": torch.zeros(2)}, str(temp))
    assert oct(out.stat().st_mode & 0o777) == oct(0o666 & ~umask)  # 0o644 under the usual umask 022


def test_a_full_disk_while_preprocessing_stops_the_run_instead_of_failing_the_video(tmp_path):
    """A video whose clip cannot be written is not a bad video: the run stops with the disk's one line and
    nothing is recorded, so a rerun on a disk with room processes it."""
    from emo.data.dataset_config import PreprocessConfig
    from emo.data.preprocess import run_preprocess
    from emo.media import WriteError
    from preprocess_helpers import process_on_a_full_disk

    out = tmp_path / "ds"
    with pytest.raises(WriteError, match="no space left on device writing"):
        run_preprocess(
            [DATA / "hdtf_speech_256_4s.mp4"],
            out,
            PreprocessConfig(size=64, min_clip_s=1.0),
            workers=1,
            process_fn=process_on_a_full_disk,
            progress=False,
        )
    assert not list((out / "videos").glob("*/video.json")) and not list((out / "tmp").glob("*"))
