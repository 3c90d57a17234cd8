"""`emo preprocess` on real talking-head videos: scene cuts, filters, crops, audio, resume, shards.

Fixture videos (tests/data, see SOURCES.md) are 4 s trims of real clips; the videos a test needs
beyond those (two videos joined end to end, a video without audio, a truncated file, two faces side
by side, no face, a panning camera, a tiny face) are made from them at test time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from emo.conditioning.audio_front_end import wav2vec2_id
from emo.data import clips as clipfmt
from emo.data import manifest as mf
from emo.data.dataset import Stage1Dataset, VideoClipDataset
from emo.data.dataset_config import PreprocessConfig
from emo.data.preprocess import add_audio_features, list_videos, parse_shard, run_preprocess
from emo.data.scenes import SceneConfig, SceneCutDetector, Span, split_scene
from emo.data.video_processing import video_id
from emo.errors import EmoError
from emo.media import iter_video_frames, load_audio, probe_video, write_video
from preprocess_helpers import process_or_crash

DATA = Path(__file__).parent / "data"
HDTF = DATA / "hdtf_speech_256_4s.mp4"  # 256², 25 fps, 100 frames, speech
EXPRESSIVE = DATA / "expressive_256_4s.mp4"  # 256², 25 fps, 100 frames, large head motion
SMALL_FACE = DATA / "small_face_1080x1920_4s.mp4"  # 1080x1920, 25 fps, seated woman, small face

# Short clips keep the tests fast; everything else is the default configuration.
CONFIG = PreprocessConfig(min_clip_s=1.0, max_clip_s=3.0)
ARGS = ["--min-clip", "1", "--max-clip", "3"]


def frames_of(path: Path, limit: int | None = None) -> list[np.ndarray]:
    frames = []
    for frame in iter_video_frames(path):
        frames.append(frame)
        if limit and len(frames) == limit:
            break
    return frames


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    """The input videos, named so that sorting puts them in a known order."""
    root = tmp_path_factory.mktemp("videos")
    out = {}
    # Two different videos joined end to end: the scene cut must be found at frame 100 (4.0 s).
    out["joined"] = root / "a_joined.mp4"
    audio = np.concatenate([load_audio(HDTF)[:64000], load_audio(EXPRESSIVE)[:64000]])
    write_video(out["joined"], frames_of(HDTF) + frames_of(EXPRESSIVE), fps=25, audio=audio)
    # A copy of the small-face video (kept 1080x1920).
    out["small_face"] = root / "b_small_face.mp4"
    out["small_face"].write_bytes(SMALL_FACE.read_bytes())
    # No audio track at all.
    out["silent"] = root / "c_silent.mp4"
    write_video(out["silent"], frames_of(EXPRESSIVE, 50), fps=25)
    # A truncated download: the first 40% of the bytes.
    out["truncated"] = root / "d_truncated.mp4"
    data = HDTF.read_bytes()
    out["truncated"].write_bytes(data[: len(data) * 2 // 5])
    # Truncated with its index at the front (mp4 "faststart"): it opens, and decoding stops early.
    out["truncated_faststart"] = root / "e_truncated_faststart.mp4"
    with av.open(str(out["truncated_faststart"]), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 256, 256, "yuv420p"
        for frame in frames_of(HDTF):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    data = out["truncated_faststart"].read_bytes()
    out["truncated_faststart"].write_bytes(data[: len(data) // 2])
    return out


@pytest.fixture(scope="module")
def dataset(videos, tmp_path_factory) -> Path:
    """The reference dataset: one uninterrupted run over all inputs, with a (tiny) audio encoder."""
    from emo.tiny import tiny_audio_model

    encoder = tmp_path_factory.mktemp("wav2vec2")
    tiny_audio_model().save_pretrained(encoder, safe_serialization=True)
    root = tmp_path_factory.mktemp("dataset") / "ds"
    run_preprocess(list(videos.values()), root, CONFIG, audio_encoder=str(encoder), progress=False)
    return root


def records_by_source(root: Path) -> dict[str, dict]:
    return {Path(r["source"]).name: r for r in mf.video_records(root)}


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file of a dataset (relative path -> content), except work in progress."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and mf.TMP not in p.relative_to(root).parts
    }


# --------------------------------------------------------------------------------------------------
# Scene cuts and clip splitting
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("detector,threshold", [("adaptive", 3.0), ("content", 27.0)])
def test_scene_cut_found_at_the_join_and_nowhere_else(videos, detector, threshold):
    config = SceneConfig(detector=detector, threshold=threshold)
    for path, expected in [(videos["joined"], 100), (HDTF, None), (EXPRESSIVE, None)]:
        cuts = SceneCutDetector(probe_video(path).fps, config)
        for frame in iter_video_frames(path):
            cuts.push(frame)
        found = cuts.finish()
        if expected is None:
            assert found == [], f"{path.name}: false cut"
        else:
            assert len(found) == 1 and abs(found[0] - expected) <= 2, found


def test_scenes_split_into_equal_clips_within_bounds():
    clips, short = split_scene(Span(10.0, 30.0), 3.0, 12.0)
    assert [(c.start_s, c.end_s) for c in clips] == [(10.0, 20.0), (20.0, 30.0)] and short == []
    clips, short = split_scene(Span(0.0, 25.0), 3.0, 12.0)
    assert len(clips) == 3 and all(abs(c.duration_s - 25 / 3) < 1e-9 for c in clips)
    assert split_scene(Span(0.0, 12.0), 3.0, 12.0)[0] == [Span(0.0, 12.0)]
    assert split_scene(Span(5.0, 7.0), 3.0, 12.0) == ([], [Span(5.0, 7.0)])
    # min > max / 2: whole max-length pieces, the remainder recorded as too short.
    clips, short = split_scene(Span(0.0, 15.0), 10.0, 12.0)
    assert clips == [Span(0.0, 12.0)] and short == [Span(12.0, 15.0)]


def test_inputs_lists_and_shards(tmp_path, videos):
    listing = tmp_path / "list.txt"
    listing.write_text(f"# my videos\n{videos['joined']}\n\n{videos['silent']}\n")
    found = list_videos([listing, videos["joined"].parent, videos["silent"]])
    assert found == sorted(v.resolve() for v in videos.values())  # folder + list + file, no duplicates
    assert parse_shard("1/4") == (1, 4) and parse_shard(None) == (0, 1)
    for bad in ("4/4", "x", "-1/2"):
        with pytest.raises(EmoError, match="--shard"):
            parse_shard(bad)
    with pytest.raises(EmoError, match="not found"):
        list_videos([tmp_path / "missing.mp4"])
    assert video_id(videos["joined"]) == video_id(Path(str(videos["joined"])))  # stable


# --------------------------------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------------------------------


def test_joined_video_is_split_at_the_join(dataset):
    record = records_by_source(dataset)["a_joined.mp4"]
    assert record["status"] == "ok"
    assert len(record["cuts_s"]) == 1 and abs(record["cuts_s"][0] - 4.0) <= 2 / 25
    spans = [(c["start_s"], c["end_s"]) for c in record["clips"]] + [
        (d["start_s"], d["end_s"]) for d in record["dropped"]
    ]
    cut = record["cuts_s"][0]
    # No clip crosses the cut; the clips of each scene are 1-3 s long.
    assert all(end <= cut + 1e-6 or start >= cut - 1e-6 for start, end in spans)
    assert len(record["clips"]) >= 3
    for clip in record["clips"]:
        assert 1.0 - 1e-6 <= clip["end_s"] - clip["start_s"] <= 3.0 + 1e-6
        assert clip["num_frames"] == round((clip["end_s"] - clip["start_s"]) * 30)


def test_small_face_video_gives_a_face_centred_512_crop(dataset):
    record = records_by_source(dataset)["b_small_face.mp4"]
    assert record["status"] == "ok" and record["info"]["width"] == 1080 and record["info"]["height"] == 1920
    assert record["clips"], record["dropped"]
    for clip in record["clips"]:
        directory = dataset / clip["path"]
        with np.load(directory / clipfmt.META) as meta:
            meta = dict(meta)
        frames = clipfmt.read_frames(directory, [0, clip["num_frames"] - 1], meta["frame_offsets"])
        assert frames.shape == (2, 512, 512, 3)
        x0, y0, x1, y1 = meta["crop_box"]
        assert x1 - x0 < 1080 / 2  # zoomed in on the face, not the whole frame
        boxes = meta["boxes"]  # (F, 4) face boxes in crop pixels
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2
        assert np.all(np.abs(centre - 256) < 0.15 * 512), centre.mean(0)
        height = np.median(boxes[:, 3] - boxes[:, 1])
        assert 0.3 * 512 < height < 0.8 * 512
        assert meta["landmarks"].shape == (clip["num_frames"], 478, 3) and meta["face_found"].mean() > 0.9
        assert np.isfinite(meta["speed"]).all() and (meta["speed"] >= 0).all()
        # The mask covers the face of every frame and not the whole crop.
        mask = meta["mask"]
        assert mask.shape == (512, 512) and 0.05 < mask.mean() < 0.8
        for b in boxes.astype(int):
            assert mask[(b[1] + b[3]) // 2, (b[0] + b[2]) // 2] == 1
        audio = load_audio(directory / clipfmt.AUDIO)
        assert abs(len(audio) / 16000 - clip["num_frames"] / 30) < 0.01


def test_stored_head_pose_is_plausible_and_gives_the_stored_speed(dataset):
    from emo.conditioning.face.pose import rotation_from_euler, rotation_speed

    clips = mf.read_manifest(dataset)
    assert clips
    for clip in clips:
        with np.load(dataset / clip["path"] / clipfmt.META) as meta:
            pose, speed, found = meta["pose"], meta["speed"], meta["face_found"]
        assert pose.shape == (clip["num_frames"], 3) and speed.shape == (clip["num_frames"],)
        assert np.isfinite(pose).all() and np.isfinite(speed).all()
        # Talking heads that face the camera, in degrees, and measured (a head that speaks moves).
        assert np.abs(pose).max() < 45, (clip["clip_id"], pose.min(0), pose.max(0))
        assert pose.std(0).max() > 0.5, (clip["clip_id"], pose.std(0))
        # The speed of each frame is the rotation speed of the stored poses (yaw, pitch, roll in that
        # order; frames without a face hold their neighbours'), in degrees per output frame.
        rotations = np.stack(
            [rotation_from_euler(*a) if f else np.full((3, 3), np.nan) for a, f in zip(pose.tolist(), found)]
        )
        np.testing.assert_allclose(speed, rotation_speed(rotations, clip["fps"], clip["fps"]), atol=1e-3)
        assert 0 < speed.mean() < 5


def test_video_without_audio_serves_stage_1_only(dataset):
    silent = records_by_source(dataset)["c_silent.mp4"]
    assert silent["status"] == "ok" and silent["clips"]
    clips = {c["clip_id"]: c for c in mf.read_manifest(dataset)}
    for clip in silent["clips"]:
        assert clips[clip["clip_id"]]["has_audio"] is False
        assert clips[clip["clip_id"]]["has_audio_features"] is False
        assert not (dataset / clip["path"] / clipfmt.AUDIO).exists()
    silent_ids = {c["clip_id"] for c in silent["clips"]}
    stage1 = {c["clip_id"] for c in Stage1Dataset(dataset).clips}
    video = VideoClipDataset(dataset, num_motion_frames=4, num_frames=12, size=64)
    assert silent_ids <= stage1
    assert not silent_ids & {c["clip_id"] for c in video.clips}
    assert (
        {c["clip_id"] for c in video.clips} == {c for c in clips if clips[c]["has_audio_features"]} != set()
    )
    item = video[0]
    assert item["frames"].shape == (16, 3, 64, 64) and item["audio"].shape[:2] == (12, 5)
    assert item["speed"].shape == (12, 5)


def test_truncated_file_is_recorded_as_failed_and_the_rest_continue(dataset):
    for name in ("d_truncated.mp4", "e_truncated_faststart.mp4"):
        record = records_by_source(dataset)[name]
        assert record["status"] == "failed" and record["clips"] == [] and name in record["error"]
        assert not [
            p for p in (dataset / mf.VIDEOS / record["video_id"]).iterdir() if p.name != mf.VIDEO_RECORD
        ]
    assert "truncated" in records_by_source(dataset)["e_truncated_faststart.mp4"]["error"]
    summary = json.loads((dataset / mf.SUMMARY).read_text())
    assert summary["videos_failed"] == 2 and summary["videos_ok"] == 3
    assert [Path(f["source"]).name for f in summary["failed"]] == [
        "d_truncated.mp4",
        "e_truncated_faststart.mp4",
    ]
    assert summary["clips_kept"] == len(mf.read_manifest(dataset)) > 0
    assert summary["hours_kept"] > 0


def test_manifest_records(dataset):
    clips = mf.read_manifest(dataset)
    assert [c["clip_id"] for c in clips] == sorted(c["clip_id"] for c in clips)
    for clip in clips:
        for key in ("source", "start_s", "end_s", "fps", "num_frames", "has_audio", "stats", "path"):
            assert key in clip
        assert clip["fps"] == 30.0 and clip["size"] == 512
        with np.load(dataset / clip["path"] / clipfmt.META) as meta:
            assert len(meta["frame_offsets"]) == clip["num_frames"] + 1
        if clip["has_audio_features"]:
            from safetensors.torch import load_file

            features = load_file(dataset / clip["path"] / clipfmt.AUDIO_FEATURES)["features"]
            assert features.shape[0] == clip["num_frames"] and torch.isfinite(features.float()).all()


def write_with_start_times(path: Path, frames, audio: np.ndarray, video_start_s: float, audio_start_s: float):
    """A 25 fps mp4 (16 kHz AAC) whose streams start at the given container times, as a player sees them."""
    from fractions import Fraction

    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        sound = container.add_stream("aac", rate=16000, layout="mono")
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = i + round(video_start_s * 25), Fraction(1, 25)
            container.mux(video.encode(frame))
        container.mux(video.encode())
        for at in range(0, len(audio), 1024):
            chunk = np.ascontiguousarray(audio[None, at : at + 1024])  # (1, N)
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
            frame.sample_rate, frame.time_base = 16000, Fraction(1, 16000)
            frame.pts = at + round(audio_start_s * 16000)
            container.mux(sound.encode(frame))
        container.mux(sound.encode())


def test_clip_audio_is_aligned_when_the_streams_start_at_different_times(tmp_path):
    # A tone burst that plays 1.0 s after the first video frame, in a file whose audio starts 0.3 s
    # after the video and in one whose video starts 0.32 s (8 frames) after the audio.
    burst_s, frames = 1.0, frames_of(HDTF, 35)  # 1.4 s
    inputs = {}
    for name, video_start, audio_start in [("audio_late", 0.0, 0.3), ("video_late", 0.32, 0.0)]:
        t = np.arange(24000) / 16000 + audio_start - video_start  # video time of each audio sample
        tone = np.where((t >= burst_s) & (t < burst_s + 0.05), 0.5 * np.sin(2 * np.pi * 1000 * t), 0.0)
        inputs[name] = tmp_path / f"{name}.mp4"
        write_with_start_times(inputs[name], frames, tone.astype(np.float32), video_start, audio_start)
    run_preprocess(list(inputs.values()), tmp_path / "ds", CONFIG, progress=False)
    records = records_by_source(tmp_path / "ds")
    for name in inputs:
        record = records[f"{name}.mp4"]
        assert record["status"] == "ok" and len(record["clips"]) == 1, record
        assert (record["info"]["audio_delay_s"] > 0) == (name == "audio_late")
        clip = record["clips"][0]
        audio = load_audio(tmp_path / "ds" / clip["path"] / clipfmt.AUDIO)
        assert abs(len(audio) / 16000 - clip["num_frames"] / 30) < 0.01
        onset = np.flatnonzero(np.abs(audio) > 0.25)[0] / 16000 + clip["start_s"]  # video time
        assert abs(onset - burst_s) < 0.01, f"{name}: the burst plays at {onset:.3f} s, not {burst_s} s"


def test_filters_drop_clips_with_their_reason(tmp_path):
    hdtf = frames_of(HDTF, 50)
    expressive = frames_of(EXPRESSIVE, 50)
    made = {}
    # Two people side by side.
    made["two_faces"] = [np.concatenate([a, b], axis=1) for a, b in zip(hdtf, expressive)]
    # No face: smooth moving colour blobs.
    yy, xx = np.mgrid[0:256, 0:256]
    made["no_face"] = [
        np.stack([(127 + 120 * np.sin((xx + 3 * t) / 20 + c)).astype(np.uint8) for c in range(3)], axis=-1)
        for t in range(50)
    ]
    # A panning camera: a textured background plus the speaker, all sliding 4 px per frame.
    rng = np.random.default_rng(0)
    texture = (rng.random((64, 160, 3)) * 255).astype(np.uint8).repeat(8, 0).repeat(8, 1)  # (512, 1280, 3)
    pan = []
    for t, frame in enumerate(hdtf):
        canvas = texture.copy()
        canvas[128:384, 300:556] = frame
        pan.append(canvas[:, 4 * t : 4 * t + 512].copy())
    made["pan"] = pan
    # A tiny face: the speaker at 96 px in a 384 px frame.
    import cv2

    made["tiny_face"] = [
        cv2.copyMakeBorder(
            cv2.resize(f, (96, 96), interpolation=cv2.INTER_AREA), 144, 144, 144, 144, cv2.BORDER_CONSTANT
        )
        for f in hdtf
    ]
    inputs = []
    for name, frames in made.items():
        path = tmp_path / f"{name}.mp4"
        write_video(path, frames, fps=25)
        inputs.append(path)
    summary = run_preprocess(inputs, tmp_path / "ds", CONFIG, progress=False)
    records = records_by_source(tmp_path / "ds")
    reasons = {name: {d["reason"] for d in records[f"{name}.mp4"]["dropped"]} for name in made}
    assert reasons == {
        "two_faces": {"multiple_faces"},
        "no_face": {"no_face"},
        "pan": {"camera_motion"},
        "tiny_face": {"face_too_small"},
    }, reasons
    assert summary["clips_kept"] == 0
    assert summary["clips_dropped"] == {
        "multiple_faces": 1,
        "no_face": 1,
        "camera_motion": 1,
        "face_too_small": 1,
    }
    # Every drop keeps the statistic it was judged on.
    assert records["pan.mp4"]["dropped"][0]["stats"]["camera_motion"] > CONFIG.max_camera_motion
    assert records["tiny_face.mp4"]["dropped"][0]["stats"]["face_px"] < CONFIG.min_face_px


# --------------------------------------------------------------------------------------------------
# Resume, kill -9, shards
# --------------------------------------------------------------------------------------------------


def test_kill_9_then_rerun_gives_the_same_dataset(videos, dataset, tmp_path):
    from emo.tiny import tiny_audio_model

    encoder = tmp_path / "wav2vec2"
    tiny_audio_model().save_pretrained(encoder, safe_serialization=True)
    out = tmp_path / "ds"
    command = [
        sys.executable,
        "-m",
        "emo.cli",
        "preprocess",
        *map(str, videos.values()),
        "--out",
        str(out),
        "--audio-encoder",
        str(encoder),
        *ARGS,
    ]
    log_path = tmp_path / "log.txt"
    partial = f"{mf.TMP}/*/*/{clipfmt.FRAMES}"  # a clip being written
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, start_new_session=True, stdout=log, stderr=log)
        try:
            # Kill once a video is done and the next one is writing a clip's frames. Generous: the
            # machine may be shared.
            deadline = time.time() + 300
            while not (list((out / mf.VIDEOS).glob(f"*/{mf.VIDEO_RECORD}")) and list(out.glob(partial))):
                assert process.poll() is None, f"preprocess exited early: {log_path.read_text()[-2000:]}"
                assert time.time() < deadline, f"no kill point in 300 s: {log_path.read_text()[-2000:]}"
                time.sleep(0.02)
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    done = list((out / mf.VIDEOS).glob("*"))
    assert 1 <= len(done) < len(videos), "the kill should land mid-run"
    # The kill interrupted a clip half-written, and nothing partial is visible: every video folder is
    # complete (has its record), there is no manifest yet.
    writing = {p.relative_to(out / mf.TMP).parts[0].split(".")[0] for p in out.glob(partial)}
    assert writing and not writing & {d.name for d in done}
    assert all((d / mf.VIDEO_RECORD).is_file() for d in done)
    assert not (out / mf.MANIFEST).exists()

    summary = run_preprocess(list(videos.values()), out, CONFIG, audio_encoder=str(encoder), progress=False)
    assert summary == json.loads((dataset / mf.SUMMARY).read_text())
    reference, rerun = tree_bytes(dataset), tree_bytes(out)
    assert rerun.keys() == reference.keys()
    for name, content in rerun.items():
        assert content == reference[name], f"{name} differs from the uninterrupted run"
    assert not list((out / mf.TMP).iterdir())  # the killed run's work in progress is gone
    # A rerun of a finished dataset skips every video.
    stamp = {p: p.stat().st_mtime_ns for p in (out / mf.VIDEOS).glob(f"*/{mf.VIDEO_RECORD}")}
    started = time.perf_counter()
    run_preprocess(list(videos.values()), out, CONFIG, audio_encoder=str(encoder), progress=False)
    assert time.perf_counter() - started < 5
    assert stamp == {p: p.stat().st_mtime_ns for p in (out / mf.VIDEOS).glob(f"*/{mf.VIDEO_RECORD}")}


@pytest.mark.parametrize("workers", [1, 2])
def test_a_crashing_worker_is_recorded_as_failed_and_the_rest_continue(videos, dataset, tmp_path, workers):
    crash = tmp_path / "b_crash.mp4"  # sorts before c_silent.mp4: it crashes first, the other runs after
    crash.write_bytes(videos["silent"].read_bytes())
    inputs, out = [crash, videos["silent"]], tmp_path / "ds"
    options = dict(workers=workers, process_fn=process_or_crash, progress=False)
    summary = run_preprocess(inputs, out, CONFIG, **options)
    records = records_by_source(out)
    crashed = records["b_crash.mp4"]
    assert crashed["status"] == "failed" and crashed["error"].startswith("worker crashed")
    assert "b_crash.mp4" in crashed["error"]
    assert summary["videos_failed"] == 1 and summary["videos_ok"] == 1
    assert [Path(f["source"]).name for f in summary["failed"]] == ["b_crash.mp4"]
    # The other video is exactly as in the reference run; nothing half-written is left behind.
    silent = records_by_source(dataset)["c_silent.mp4"]
    assert records["c_silent.mp4"]["clips"] == silent["clips"] != []
    for clip in silent["clips"]:
        for name in (clipfmt.FRAMES, clipfmt.META):
            assert (out / clip["path"] / name).read_bytes() == (dataset / clip["path"] / name).read_bytes()
    assert not list((out / mf.TMP).iterdir())
    assert [p.name for p in (out / mf.VIDEOS / crashed["video_id"]).iterdir()] == [mf.VIDEO_RECORD]
    # Like a corrupt file, the crashed video is done: a rerun skips it.
    stamp = (out / mf.VIDEOS / crashed["video_id"] / mf.VIDEO_RECORD).stat().st_mtime_ns
    assert run_preprocess(inputs, out, CONFIG, **options) == summary
    assert (out / mf.VIDEOS / crashed["video_id"] / mf.VIDEO_RECORD).stat().st_mtime_ns == stamp


def test_shards_with_workers_merge_into_one_manifest(videos, dataset, tmp_path):
    from emo.cli import main

    out = tmp_path / "ds"
    inputs = [videos["joined"], videos["silent"], videos["truncated"]]
    assert (
        main(["preprocess", *map(str, inputs), "--out", str(out), "--shard", "0/2", "--workers", "2", *ARGS])
        == 0
    )
    summary = mf.build_manifest(out)
    assert summary["shards_missing"] == ["1-of-2"]
    assert main(["preprocess", *map(str, inputs), "--out", str(out), "--shard", "1/2", *ARGS]) == 0
    assert main(["preprocess", "--merge", "--out", str(out)]) == 0
    merged = json.loads((out / mf.SUMMARY).read_text())
    assert merged["shards_missing"] == [] and merged["videos_ok"] == 2 and merged["videos_failed"] == 1
    # The same clips (frames, boxes...) as the single run, without audio features (no encoder here).
    ids = {video_id(v.resolve()) for v in inputs}
    single = [c for c in mf.read_manifest(dataset) if c["video_id"] in ids]
    sharded = mf.read_manifest(out)
    assert [c["clip_id"] for c in sharded] == [c["clip_id"] for c in single]
    for a, b in zip(sharded, single):
        assert {**a, "has_audio_features": None} == {**b, "has_audio_features": None}
        assert (out / a["path"] / clipfmt.FRAMES).read_bytes() == (
            dataset / b["path"] / clipfmt.FRAMES
        ).read_bytes()


def test_a_different_configuration_is_refused(videos, dataset):
    with pytest.raises(EmoError, match="different settings"):
        run_preprocess(
            [videos["silent"]], dataset, PreprocessConfig(min_clip_s=2.0, max_clip_s=3.0), progress=False
        )


def test_a_different_audio_encoder_is_refused(videos, dataset, tmp_path):
    from emo.tiny import tiny_audio_model

    same, other = tmp_path / "same", tmp_path / "other"
    tiny_audio_model().save_pretrained(same, safe_serialization=True)  # the dataset's, in another folder
    tiny_audio_model(seed=1).save_pretrained(other, safe_serialization=True)
    recorded = json.loads((dataset / mf.DATASET_CONFIG).read_text())["audio_encoder"]
    assert recorded == wav2vec2_id(same) != wav2vec2_id(other)
    before = tree_bytes(dataset)
    with pytest.raises(EmoError, match="different wav2vec2 model"):
        run_preprocess([videos["silent"]], dataset, CONFIG, audio_encoder=str(other), progress=False)
    with pytest.raises(EmoError, match="made with --audio-encoder"):
        run_preprocess([videos["silent"]], dataset, CONFIG, progress=False)
    with pytest.raises(EmoError, match="different wav2vec2 model"):
        add_audio_features(dataset, str(other), progress=False)
    assert tree_bytes(dataset) == before


def test_audio_features_added_later(tmp_path):
    from emo.cli import main
    from emo.tiny import tiny_audio_model

    out = tmp_path / "ds"
    encoder = tmp_path / "wav2vec2"
    tiny_audio_model().save_pretrained(encoder, safe_serialization=True)
    assert main(["preprocess", str(HDTF), "--out", str(out), *ARGS, "--max-clip", "8"]) == 0
    with pytest.raises(EmoError, match="add-audio-features"):
        VideoClipDataset(out)
    config = PreprocessConfig(min_clip_s=1.0, max_clip_s=8.0)
    # Made without an encoder: resuming with one would leave the first clips without features.
    with pytest.raises(EmoError, match="made without --audio-encoder.*--add-audio-features"):
        run_preprocess([HDTF], out, config, audio_encoder=str(encoder), progress=False)
    assert (
        main(["preprocess", "--add-audio-features", "--out", str(out), "--audio-encoder", str(encoder)]) == 0
    )
    summary = json.loads((out / mf.SUMMARY).read_text())
    assert summary["clips_with_audio_features"] == summary["clips_kept"] > 0
    assert len(VideoClipDataset(out)) > 0
    # Now the dataset's features come from this encoder: a resume must use it.
    assert json.loads((out / mf.DATASET_CONFIG).read_text())["audio_encoder"] == wav2vec2_id(encoder)
    with pytest.raises(EmoError, match="made with --audio-encoder"):
        run_preprocess([HDTF], out, config, progress=False)
    assert run_preprocess([HDTF], out, config, audio_encoder=str(encoder)) == summary
