"""Media I/O: audio in every container we promise, images, video streaming, the atomic VideoWriter."""

from __future__ import annotations

import errno
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from emo.errors import EmoError
from emo.media import (
    VideoWriter,
    atomic_write_bytes,
    check_output,
    iter_video_frames,
    load_audio,
    load_image,
    num_frames_for,
    probe_video,
    replace_folder,
)

DATA = Path(__file__).parent / "data"
SPEECH = DATA / "speech_en_24k_3s.wav"  # 3.0 s, 24 kHz mono


def encode_audio(src: Path, dst: Path, codec: str, container_format: str | None = None) -> Path:
    """Re-encode a wav with PyAV (as a user's mp3/flac/ogg/m4a file would be)."""
    samples, rate = sf.read(src, dtype="float32")
    with av.open(str(dst), "w", format=container_format) as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        fmt = stream.codec_context.codec.audio_formats[0].name
        frame = av.AudioFrame.from_ndarray(samples[None, :], format="flt", layout="mono")
        frame.sample_rate = rate
        frame.pts = 0
        resampler = av.AudioResampler(format=fmt, layout="mono", rate=rate)
        for converted in resampler.resample(frame):
            out.mux(stream.encode(converted))
        out.mux(stream.encode(None))
    return dst


def test_wav_is_resampled_to_16k_mono():
    audio = load_audio(SPEECH)
    reference, rate = sf.read(SPEECH, dtype="float32")
    assert rate == 24000 and audio.dtype == np.float32 and audio.ndim == 1
    assert len(audio) == pytest.approx(len(reference) * 16000 / 24000, abs=2)
    assert np.abs(audio).max() <= 1.0
    assert np.sqrt(np.mean(audio**2)) == pytest.approx(np.sqrt(np.mean(reference**2)), rel=0.05)


def test_resampling_keeps_pitch_and_downmix_averages(tmp_path):
    t = np.arange(48000) / 48000
    left = 0.5 * np.sin(2 * np.pi * 440 * t)
    path = tmp_path / "stereo48k.wav"
    sf.write(path, np.stack([left, np.zeros_like(left)], axis=1).astype(np.float32), 48000, subtype="FLOAT")
    audio = load_audio(path)
    assert len(audio) == 16000
    spectrum = np.abs(np.fft.rfft(audio))
    assert np.argmax(spectrum) * 16000 / len(audio) == pytest.approx(440, abs=2)
    assert np.abs(audio[100:-100]).max() == pytest.approx(0.25, abs=0.01)  # (L + R) / 2


@pytest.mark.parametrize(
    "suffix, codec, fmt",
    [(".mp3", "mp3", None), (".flac", "flac", None), (".ogg", "libopus", "ogg"), (".m4a", "aac", "ipod")],
)
def test_compressed_audio_formats(tmp_path, suffix, codec, fmt):
    path = encode_audio(SPEECH, tmp_path / f"speech{suffix}", codec, fmt)
    audio = load_audio(path)
    reference = load_audio(SPEECH)
    # Lossy codecs add encoder delay/padding of a few frames; lengths agree to ~0.1 s.
    assert abs(len(audio) - len(reference)) < 0.1 * 16000
    assert np.sqrt(np.mean(audio**2)) == pytest.approx(np.sqrt(np.mean(reference**2)), rel=0.15)


@pytest.mark.parametrize("suffix", [".mp4", ".mov"])
def test_audio_track_of_video(tmp_path, suffix):
    speech = load_audio(SPEECH)
    path = tmp_path / f"talk{suffix}"
    with VideoWriter(path, 25, 64, 64, audio=speech) as writer:
        for _ in range(75):
            writer.write(np.zeros((64, 64, 3), np.uint8))
    audio = load_audio(path)
    assert abs(len(audio) - len(speech)) < 0.1 * 16000
    # Same waveform, aligned in time (the priming samples of AAC are trimmed on decode).
    assert np.corrcoef(audio[2048:40000], speech[2048:40000])[0, 1] > 0.99


def test_silence_is_valid(tmp_path):
    path = tmp_path / "silence.wav"
    sf.write(path, np.zeros(8000, np.float32), 16000)
    audio = load_audio(path)
    assert len(audio) == 8000 and not audio.any()


def test_audio_errors_name_the_file(tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    zero = tmp_path / "zero.wav"
    sf.write(zero, np.zeros(0, np.float32), 16000)
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF" + bytes(range(256)) * 8)
    text = tmp_path / "notes.txt"
    text.write_text("this is not audio\n" * 20)
    no_audio = DATA / "face_calm_speech_4s.mp4"  # video only
    cases = {
        empty: "empty",
        zero: "zero length",
        corrupt: "cannot read audio",
        text: "cannot read audio",
        no_audio: "no audio stream",
        tmp_path / "missing.wav": "not found",
    }
    for path, words in cases.items():
        with pytest.raises(EmoError, match=words) as info:
            load_audio(path)
        message = str(info.value)
        assert str(path) in message and "\n" not in message


def test_load_image_orientation_alpha_and_errors(tmp_path):
    # EXIF orientation 6 (rotate 90° clockwise to display) turns a 40x20 (w x h) file into 20x40.
    image = Image.new("RGB", (40, 20), (10, 200, 30))
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(tmp_path / "rotated.jpg", exif=exif)
    assert load_image(tmp_path / "rotated.jpg").shape == (40, 20, 3)
    # Transparent pixels become white.
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:4, :, :] = (255, 0, 0, 255)
    Image.fromarray(rgba).save(tmp_path / "alpha.png")
    loaded = load_image(tmp_path / "alpha.png")
    assert loaded.shape == (8, 8, 3) and loaded[0, 0].tolist() == [255, 0, 0]
    assert loaded[7, 7].tolist() == [255, 255, 255]
    corrupt = tmp_path / "broken.png"
    corrupt.write_bytes((tmp_path / "alpha.png").read_bytes()[:40])
    for path in (corrupt, tmp_path / "missing.png", DATA / "speech_en_24k_3s.wav"):
        with pytest.raises(EmoError) as info:
            load_image(path)
        assert str(path) in str(info.value)


def test_video_writer_round_trip(tmp_path):
    path = tmp_path / "out.mp4"
    frames = [np.full((48, 64, 3), 20 * i, np.uint8) for i in range(12)]
    audio = np.sin(np.arange(8000) / 16000 * 2 * np.pi * 300).astype(np.float32) * 0.3
    with VideoWriter(path, 25, 64, 48, audio=audio) as writer:
        for frame in frames:
            writer.write(frame)
    info = probe_video(path)
    assert (info.width, info.height, info.num_frames, info.has_audio) == (64, 48, 12, True)
    assert info.fps == 25 and info.duration_s == pytest.approx(12 / 25, abs=0.01)
    decoded = list(iter_video_frames(path))
    assert len(decoded) == 12
    assert [round(float(f.mean()) / 20) for f in decoded] == list(range(12))
    assert abs(len(load_audio(path)) - len(audio)) < 0.07 * 16000  # AAC pads to whole 1024-sample frames
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]  # no temp file left behind


def test_video_writer_makes_no_b_frames(tmp_path):
    # With B-frames, x264 encoded identical frames differently in about 1 generation run in 8 (the same
    # seed must give the same file); I and P frames only are what keeps it repeatable.
    import av

    path = tmp_path / "ip.mp4"
    texture = np.random.default_rng(0).integers(0, 256, (64, 128, 3), dtype=np.uint8)
    with VideoWriter(path, 25, 64, 64) as writer:
        for i in range(30):  # a slow pan: what x264 codes as B-frames when it may
            writer.write(np.ascontiguousarray(texture[:, i : i + 64]))
    with av.open(str(path)) as container:
        # AVPictureType: 1 = I, 2 = P, 3 = B
        kinds = {
            {1: "I", 2: "P", 3: "B"}.get(int(frame.pict_type), "?") for frame in container.decode(video=0)
        }
    assert kinds <= {"I", "P"} and "P" in kinds


def test_video_writer_fractional_fps_and_odd_size(tmp_path):
    path = tmp_path / "odd.mp4"
    with VideoWriter(path, 30000 / 1001, 63, 47) as writer:
        assert (writer.width, writer.height) == (64, 48)
        for _ in range(5):
            frame = np.zeros((47, 63, 3), np.uint8)
            frame[:, -1] = 255  # the last column is repeated into the padding
            writer.write(frame)
    info = probe_video(path)
    assert (info.width, info.height) == (64, 48)
    assert Fraction(info.fps).limit_denominator(1001) == Fraction(30000, 1001)
    last = next(iter_video_frames(path))
    assert last[:, -1].mean() > 200 and last[:, 40].mean() < 50


def test_video_writer_never_clobbers(tmp_path):
    path = tmp_path / "keep.mp4"
    path.write_bytes(b"user's file")
    with pytest.raises(EmoError, match="--overwrite"):
        VideoWriter(path, 25, 32, 32)
    with pytest.raises(RuntimeError, match="boom"):
        with VideoWriter(path, 25, 32, 32, overwrite=True) as writer:
            writer.write(np.zeros((32, 32, 3), np.uint8))
            raise RuntimeError("boom")
    assert path.read_bytes() == b"user's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.mp4"]  # temp file removed
    with VideoWriter(path, 25, 32, 32, overwrite=True) as writer:
        writer.write(np.zeros((32, 32, 3), np.uint8))
    assert probe_video(path).num_frames == 1
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(EmoError, match="a_file"):
        VideoWriter(blocker / "out.mp4", 25, 32, 32)


def test_frame_rate_resampling_by_nearest_timestamp(tmp_path):
    path = tmp_path / "count.mp4"
    with VideoWriter(path, 25, 32, 32, crf=0) as writer:
        for i in range(20):  # 0.8 s
            writer.write(np.full((32, 32, 3), 10 * i, np.uint8))

    def indices(fps):
        return [round(float(f.mean()) / 10) for f in iter_video_frames(path, fps=fps)]

    assert indices(None) == list(range(20))
    assert indices(25) == list(range(20))
    assert indices(50) == [i // 2 for i in range(40)]  # each frame twice
    assert indices(12.5) == list(range(0, 20, 2))  # every other frame
    at30 = indices(30)
    assert len(at30) == num_frames_for(0.8, 30) == 24
    assert at30 == [int(np.ceil(k * 25 / 30 - 0.5)) for k in range(24)]  # nearest, ties to the earlier


def test_probe_and_frames_reject_non_video(tmp_path):
    with pytest.raises(EmoError, match="no video stream"):
        probe_video(SPEECH)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(EmoError, match="empty"):
        next(iter_video_frames(empty))


def test_atomic_write_bytes(tmp_path):
    path = tmp_path / "sub" / "data.json"
    atomic_write_bytes(path, b"{}")
    assert path.read_bytes() == b"{}"
    atomic_write_bytes(path, b"[1]")
    assert path.read_bytes() == b"[1]"
    with pytest.raises(EmoError, match="exists"):
        atomic_write_bytes(path, b"x", overwrite=False)
    assert [p.name for p in path.parent.iterdir()] == ["data.json"]


def test_check_output_tries_a_real_file_and_leaves_none(tmp_path):
    """The up-front check creates a file where the output goes rather than trusting the mode bits, which say
    yes to root even on /proc, where the write fails only after the long work; it leaves nothing behind."""
    assert check_output(tmp_path / "new" / "o.mp4", overwrite=False) == tmp_path / "new" / "o.mp4"
    assert list(tmp_path.iterdir()) == []
    # No file can be made in /proc, even by root.
    with pytest.raises(EmoError, match=r"cannot write /proc/o\.mp4"):
        check_output("/proc/o.mp4", overwrite=True)


def test_replace_folder_keeps_the_old_folder_until_the_new_one_is_in(tmp_path, monkeypatch):
    final, new = tmp_path / "model", tmp_path / ".model.tmp"
    final.mkdir()
    (final / "weights").write_text("old")
    new.mkdir()
    (new / "weights").write_text("new")
    real_replace = os.replace

    def fail_into_final(src, dst):
        if Path(src) == new:
            raise OSError(errno.EXDEV, "simulated failure")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", fail_into_final)
    with pytest.raises(OSError, match="simulated"):
        replace_folder(new, final)
    assert (final / "weights").read_text() == "old"  # put back
    monkeypatch.setattr(os, "replace", real_replace)
    replace_folder(new, final)
    assert (final / "weights").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # nothing set aside is left
    other = tmp_path / ".other"
    other.mkdir()
    replace_folder(other, tmp_path / "fresh")  # nothing there yet: a plain rename
    assert (tmp_path / "fresh").is_dir() and not other.exists()
    a_file, folder = tmp_path / "was_a_file", tmp_path / ".folder"
    a_file.write_text("old")
    folder.mkdir()
    replace_folder(folder, a_file)  # a file in the way is replaced too, and not left behind set aside
    assert a_file.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh", "model", "was_a_file"]
    # A link to a folder is replaced by the new folder; the link goes, the folder it pointed to stays whole.
    link, newer = tmp_path / "link", tmp_path / ".newer"
    link.symlink_to(final)
    newer.mkdir()
    replace_folder(newer, link)
    assert link.is_dir() and not link.is_symlink()
    assert (final / "weights").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh", "link", "model", "was_a_file"]


# -- every image mode Pillow opens ---------------------------------------------------------------------
PORTRAIT = Path(__file__).parent.parent / "src" / "emo" / "assets" / "portrait.jpg"


def portrait_in_mode(mode: str) -> Image.Image:
    """The same portrait as a user's file of that mode would hold it (16-bit as 0-65535, float as 0-1...)."""
    rgb = Image.open(PORTRAIT).convert("RGB")
    gray = np.asarray(rgb.convert("L"))
    if mode == "I;16":
        return Image.fromarray(gray.astype(np.uint16) * 257)  # a 16-bit grayscale PNG
    if mode == "I":
        return Image.fromarray(
            gray.astype(np.int32) * 257
        )  # 16-bit data in a 32-bit image (TIFF, old Pillow)
    if mode == "F":
        return Image.fromarray(gray.astype(np.float32) / 255)  # float 0-1 (scientific TIFF)
    if mode in ("LA", "PA"):
        base = rgb.convert("L" if mode == "LA" else "P")
        image = base.convert(mode)
        alpha = np.full(gray.shape, 255, np.uint8)
        alpha[:, :40] = 0  # a transparent band: white after compositing
        image.putalpha(Image.fromarray(alpha))
        return image
    if mode == "P":
        return rgb.convert("P", palette=Image.Palette.ADAPTIVE)
    return rgb.convert(mode)  # 1 (dithered, as Pillow and scanners make it), L, RGBA, CMYK, YCbCr


# mode -> a format that keeps it on disk (None: no format Pillow writes keeps it, so the image is converted
# in memory, by the function load_image uses)
MODES = {
    "1": "png",
    "L": "png",
    "LA": "png",
    "P": "png",
    "PA": None,
    "RGBA": "png",
    "CMYK": "jpg",
    "YCbCr": None,
    "I;16": "png",
    "I": "tiff",
    "F": "tiff",
}


@pytest.fixture(scope="module")
def face_analyzer():
    from emo.conditioning.face import FaceAnalyzer

    analyzer = FaceAnalyzer()
    yield analyzer
    analyzer.close()


@pytest.mark.parametrize("mode", list(MODES))
def test_every_image_mode_becomes_rgb_with_the_face_found(mode, tmp_path, face_analyzer):
    from emo.media import image_to_rgb

    image = portrait_in_mode(mode)
    assert image.mode == mode
    if MODES[mode]:
        path = tmp_path / f"portrait.{MODES[mode]}"
        image.save(path)
        assert Image.open(path).mode == mode  # the file really holds that mode
        rgb = load_image(path)
    else:
        rgb = image_to_rgb(image)
    assert rgb.shape == (480, 480, 3) and rgb.dtype == np.uint8
    # The right brightness (a 16-bit image clipped at 255 is almost white; the portrait's mean is ~90).
    reference = np.asarray(Image.open(PORTRAIT).convert("L"), dtype=np.float64)
    gray = rgb.astype(np.float64).mean(axis=2)
    keep = slice(40, None)  # the transparent band of LA / PA is white, as promised
    assert abs(gray[:, keep].mean() - reference[:, keep].mean()) < 6, (gray.mean(), reference.mean())
    if mode in ("LA", "PA"):
        assert gray[:, :40].min() == 255
    boxes = face_analyzer.detect(rgb)
    assert len(boxes) == 1, f"{mode}: {len(boxes)} faces"


def test_16_bit_png_orientation_is_applied(tmp_path, face_analyzer):
    """A 16-bit grayscale PNG stored on its side with EXIF orientation 8 comes out upright, face found."""
    image = portrait_in_mode("I;16").rotate(-90, expand=True)  # stored rotated 90° clockwise
    exif = Image.Exif()
    exif[0x0112] = 8  # "turn 90° counter-clockwise to display"
    image.save(tmp_path / "sideways16.png", exif=exif)
    rgb = load_image(tmp_path / "sideways16.png")
    upright = np.asarray(Image.open(PORTRAIT).convert("L"), dtype=np.float64)
    assert np.abs(rgb[..., 0].astype(np.float64) - upright).mean() < 2
    assert len(face_analyzer.detect(rgb)) == 1


def test_phone_rotation_metadata_is_applied(tmp_path):
    """A phone stores an upright video sideways plus a display matrix ("rotate 90"): frames and sizes come
    out as a player shows them."""
    import struct

    rng = np.random.default_rng(0)
    frames = [np.repeat(np.repeat(rng.integers(0, 256, (4, 8, 3), dtype=np.uint8), 8, 0), 8, 1)] * 3  # 32x64
    from emo.media import write_video

    write_video(tmp_path / "stored.mp4", frames, 10)
    data = bytearray((tmp_path / "stored.mp4").read_bytes())
    matrix = data.find(b"tkhd") + 4 + 40  # version-0 track header: the 3x3 matrix after 40 bytes
    data[matrix : matrix + 36] = struct.pack(
        ">9i", 0, 0x10000, 0, -0x10000, 0, 0, 0, 0, 0x40000000
    )  # rotate 90
    (tmp_path / "phone.mp4").write_bytes(bytes(data))
    info = probe_video(tmp_path / "phone.mp4")
    assert (info.width, info.height) == (32, 64)
    shown = next(iter_video_frames(tmp_path / "phone.mp4"))
    stored = next(iter_video_frames(tmp_path / "stored.mp4"))
    assert shown.shape == (64, 32, 3) and stored.shape == (32, 64, 3)
    assert np.abs(shown.astype(int) - np.rot90(stored, -1).astype(int)).mean() < 3  # turned clockwise
