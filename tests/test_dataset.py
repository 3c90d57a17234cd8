"""Dataset readers: what the trainer gets for stage 1 and stages 2/3.

The dataset here is written in the on-disk format by hand so every value is known: frame i of a clip
is a flat image of grey level 8·i + 16, its audio feature rows are all equal to i, and its head speed
is i / 100. Reading a sample back then tells exactly which frames, features and speeds were chosen.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from emo.conditioning.face.geometry import LIPS_OUTER, MOUTH_MARGIN
from emo.conditioning.windows import window
from emo.data import clips as clipfmt
from emo.data import manifest as mf
from emo.data.dataset import Stage1Dataset, VideoClipDataset
from emo.errors import EmoError

SIZE = 32
LAYERS, DIM = 3, 4


def grey(i: int) -> int:
    return 8 * i + 16


def frame_index(image: torch.Tensor) -> int:
    """Recover the frame number from a (3, H, W) [-1, 1] image written by ``write_clip``."""
    level = (image.mean().item() + 1) * 127.5
    return int(round((level - 16) / 8))


def mouth_of(i: int) -> tuple[float, float, float, float]:
    """Frame i's lips span x 10..18 and y 20..(21 + i % 4) pixels: the mouth opens and closes."""
    return 10.0, 20.0, 18.0, 21.0 + i % 4


def write_clip(root, vid: str, clip_id: str, num_frames: int, features: bool) -> dict:
    directory = root / mf.VIDEOS / vid / clip_id
    directory.mkdir(parents=True)
    writer = clipfmt.FrameStreamWriter(directory)
    for i in range(num_frames):
        writer.write(np.full((SIZE, SIZE, 3), grey(i), dtype=np.uint8))
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    mask[8:24, 10:22] = 1
    landmarks = np.full((num_frames, 478, 3), SIZE / 2, dtype=np.float32)
    for i in range(num_frames):
        x0, y0, x1, y1 = mouth_of(i)
        lips = np.linspace([x0, y0], [x1, y1], len(LIPS_OUTER))  # corners of the box among the points
        landmarks[i, list(LIPS_OUTER), :2] = lips
    np.savez(
        directory / clipfmt.META,
        frame_offsets=writer.close(),
        landmarks=landmarks,
        speed=np.arange(num_frames, dtype=np.float32) / 100,
        mask=mask,
    )
    if features:
        values = torch.arange(num_frames, dtype=torch.float16)[:, None, None].expand(num_frames, LAYERS, DIM)
        save_file({"features": values.contiguous()}, str(directory / clipfmt.AUDIO_FEATURES))
    return {
        "clip_id": clip_id,
        "video_id": vid,
        "source": f"{vid}.mp4",
        "path": f"{mf.VIDEOS}/{vid}/{clip_id}",
        "start_s": 0.0,
        "end_s": num_frames / 30,
        "fps": 30.0,
        "num_frames": num_frames,
        "size": SIZE,
        "has_audio": features,
        "stats": {},
    }


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("dataset")
    # (video, clip frames, has audio features): one video without audio serves stage 1 only.
    layout = {"talk": [(24, True), (20, True)], "silent": [(10, False)]}
    for vid, clips in layout.items():
        records = [write_clip(root, vid, f"{vid}_{k:03d}", n, feats) for k, (n, feats) in enumerate(clips)]
        mf.write_json(
            root / mf.VIDEOS / vid / mf.VIDEO_RECORD,
            {
                "video_id": vid,
                "source": f"{vid}.mp4",
                "status": "ok",
                "error": None,
                "info": {"duration_s": 2.0},
                "clips": records,
                "dropped": [],
            },
        )
    summary = mf.build_manifest(root)
    assert summary["clips_kept"] == 3 and summary["clips_with_audio_features"] == 2
    return root


def test_stage1_reference_is_another_frame_of_the_same_clip(dataset_dir):
    data = Stage1Dataset(dataset_dir, seed=3)
    assert len(data) == 24 + 20 + 10  # one item per frame of every clip, audio or not
    targets: dict[str, list[int]] = {}
    for i in range(len(data)):
        item = data[i]
        assert item["target"].shape == (3, SIZE, SIZE) and item["target"].dtype == torch.float32
        assert item["target"].min() >= -1 and item["target"].max() <= 1
        target, reference = frame_index(item["target"]), frame_index(item["reference"])
        assert reference != target
        num_frames = {"talk_000": 24, "talk_001": 20, "silent_000": 10}[item["clip_id"]]
        assert 0 <= reference < num_frames
        targets.setdefault(item["clip_id"], []).append(target)
        assert set(item["mask"].unique().tolist()) == {0.0, 1.0} and item["mask"].shape == (1, SIZE, SIZE)
        assert item["mask"][0, 16, 16] == 1 and item["mask"][0, 0, 0] == 0
    # Targets walk through every frame of every clip, in order.
    assert targets == {
        "silent_000": list(range(10)),
        "talk_000": list(range(24)),
        "talk_001": list(range(20)),
    }


def expected_mouth(i: int) -> torch.Tensor:
    x0, y0, x1, y1 = mouth_of(i)
    pad = MOUTH_MARGIN * (x1 - x0)
    return torch.tensor([x0 - pad, y0 - pad, x1 + pad, y1 + pad]) / SIZE


def test_items_carry_each_target_frames_mouth_box(dataset_dir):
    """The mouth box (for train.mouth_weight) is the target frame's own: it follows the lips frame by frame."""
    item = Stage1Dataset(dataset_dir, seed=0)[5]
    assert torch.allclose(item["mouth"], expected_mouth(frame_index(item["target"]))[None])
    data = VideoClipDataset(dataset_dir, num_motion_frames=2, num_frames=4, audio_window=1, seed=0)
    item = data[1]
    current = [frame_index(frame) for frame in item["frames"][2:]]
    assert item["mouth"].shape == (4, 4)
    assert torch.allclose(item["mouth"], torch.stack([expected_mouth(i) for i in current]))
    assert len({round(float(box[3]), 4) for box in item["mouth"]}) > 1  # it moves


def test_stage1_is_deterministic_per_seed_and_epoch(dataset_dir):
    a, b = Stage1Dataset(dataset_dir, seed=5), Stage1Dataset(dataset_dir, seed=5)
    refs = lambda d: [frame_index(d[i]["reference"]) for i in range(0, len(d), 3)]  # noqa: E731
    assert refs(a) == refs(b)
    assert refs(a) != refs(Stage1Dataset(dataset_dir, seed=6))
    first = refs(a)
    a.set_epoch(1)
    assert refs(a) != first
    a.set_epoch(0)
    assert refs(a) == first


def test_video_clip_window_audio_and_speed_match_the_whole_clip_window(dataset_dir):
    n, f, m = 4, 6, 2
    data = VideoClipDataset(dataset_dir, num_motion_frames=n, num_frames=f, audio_window=m, seed=1)
    # Only the clips with audio features: 1 + (24-10)//6 = 3 and 1 + (20-10)//6 = 2 items.
    assert len(data) == 5
    for epoch in range(3):
        data.set_epoch(epoch)
        for i in range(len(data)):
            item = data[i]
            assert item["clip_id"].startswith("talk_")
            total = 24 if item["clip_id"] == "talk_000" else 20
            frames = [frame_index(x) for x in item["frames"]]
            start = frames[0]
            assert frames == list(range(start, start + n + f))  # contiguous, motion frames first
            assert frame_index(item["reference"]) not in frames  # reference outside the window
            # audio = window(features of the whole clip, m) sliced to the f current frames
            whole = torch.arange(total, dtype=torch.float32)[:, None, None].expand(total, LAYERS, DIM)
            expected = window(whole, m)[start + n : start + n + f]
            assert item["audio"].shape == (f, 2 * m + 1, LAYERS, DIM) and item["audio"].dtype == torch.float32
            torch.testing.assert_close(item["audio"], expected)
            speeds = window(torch.arange(total, dtype=torch.float32) / 100, m)[start + n : start + n + f]
            torch.testing.assert_close(item["speed"], speeds)
            assert item["mask"].shape == (1, SIZE, SIZE)


def test_window_at_the_clip_end_uses_real_neighbours_then_replicates(dataset_dir):
    # f = 20 current frames on a 24-frame clip: the window must read frames before the current ones
    # (real context) and replicate only past the clip's last frame.
    data = VideoClipDataset(dataset_dir, num_motion_frames=4, num_frames=20, audio_window=2, seed=0)
    item = next(data[i] for i in range(len(data)) if data[i]["clip_id"] == "talk_000")
    audio = item["audio"][:, :, 0, 0]  # (f, 2m+1) feature value = source frame index
    assert audio[0].tolist() == [2, 3, 4, 5, 6]  # current frame 4 sees frames 2, 3 (motion frames)
    assert audio[-1].tolist() == [21, 22, 23, 23, 23]  # last frame: replicate past the clip end


def test_dataloader_workers_give_the_same_batches(dataset_dir):
    def batches(workers: int):
        data = VideoClipDataset(
            dataset_dir, num_motion_frames=2, num_frames=4, audio_window=1, size=16, seed=9
        )
        loader = torch.utils.data.DataLoader(data, batch_size=2, num_workers=workers)
        return [(b["frames"], b["audio"], b["clip_id"]) for b in loader]

    serial, parallel = batches(0), batches(2)
    assert len(serial) == len(parallel) > 1
    for (fa, aa, ia), (fb, ab, ib) in zip(serial, parallel):
        assert ia == ib
        torch.testing.assert_close(fa, fb)
        torch.testing.assert_close(aa, ab)
    assert serial[0][0].shape[-2:] == (16, 16)  # the optional resize for small tests


def test_stage2_needs_audio_features(tmp_path, dataset_dir, caplog):
    with pytest.raises(EmoError, match="add-audio-features"):
        VideoClipDataset(dataset_dir, num_motion_frames=4, num_frames=30)  # no clip is long enough
    root = tmp_path / "silent_only"
    record = write_clip(root, "silent", "silent_000", 20, features=False)
    mf.write_json(
        root / mf.VIDEOS / "silent" / mf.VIDEO_RECORD,
        {
            "video_id": "silent",
            "source": "s.mp4",
            "status": "ok",
            "error": None,
            "info": {"duration_s": 1.0},
            "clips": [record],
            "dropped": [],
        },
    )
    mf.build_manifest(root)
    with caplog.at_level("INFO"), pytest.raises(EmoError, match="--add-audio-features"):
        VideoClipDataset(root)
    assert "stage 1 only" in caplog.text
    assert len(Stage1Dataset(root)) == 20


def test_missing_manifest_says_how_to_make_one(tmp_path):
    with pytest.raises(EmoError, match="emo preprocess"):
        Stage1Dataset(tmp_path)
