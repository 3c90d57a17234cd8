"""`emo evaluate` end to end: pairing, unavailable metrics, all metrics with weights, error paths."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from emo.cli import main
from emo.eval import arcface, expression, i3d, inception, lpips, syncnet
from emo.media import iter_video_frames, load_audio, write_video

DATA = Path(__file__).parent / "data"
FRAMES = 32  # two 16-frame FVD clips per video


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """reference/{same,noisy}.mp4 (+ same.jpg) and generated/{same,noisy}.mp4.

    ``same`` is generated identical to its ground truth; ``noisy`` has pixel noise added.
    """
    root = tmp_path_factory.mktemp("eval")
    ref, gen = root / "reference", root / "generated"
    ref.mkdir()
    gen.mkdir()
    source = DATA / "hdtf_speech_256_4s.mp4"
    frames = [f for _, f in zip(range(FRAMES), iter_video_frames(source), strict=False)]
    audio = load_audio(source)[: 16000 * FRAMES // 25]
    write_video(ref / "same.mp4", frames, 25, audio=audio)
    shutil.copyfile(ref / "same.mp4", gen / "same.mp4")
    write_video(ref / "noisy.mp4", frames, 25, audio=audio)
    rng = np.random.default_rng(0)
    noisy = [np.clip(f.astype(int) + rng.integers(-25, 26, f.shape), 0, 255).astype(np.uint8) for f in frames]
    write_video(gen / "noisy.mp4", noisy, 25, audio=audio)
    from emo.media import save_image

    save_image(ref / "same.jpg", frames[0])
    return root


def _run(dirs, out, *extra):
    return main(["evaluate", "--generated", str(dirs / "generated"), "--reference", str(dirs / "reference"),
                 "--out", str(out), "--no-progress", *extra])  # fmt: skip


def test_without_weights_learned_metrics_are_unavailable_with_their_flag(dirs, tmp_path, capsys):
    out = tmp_path / "res.json"
    assert _run(dirs, out) == 0
    result = json.loads(out.read_text())
    metrics = result["metrics"]
    for name, flag in (("fid", "--inception"), ("fvd", "--i3d"), ("lse_c", "--syncnet"), ("lse_d", "--syncnet"),
                       ("fsim", "--arcface"), ("efid", "--deep3d")):  # fmt: skip
        assert metrics[name]["status"] == "unavailable" and metrics[name]["value"] is None
        assert metrics[name]["enable"] == f"{flag} PATH"
    assert metrics["lpips"]["enable"] == "--lpips PATH --lpips-backbone PATH"
    markdown = out.with_suffix(".md").read_text()
    assert "| FID | unavailable |" in markdown and "`--inception PATH`" in markdown
    assert "`--syncnet PATH`" in markdown and "`--deep3d PATH`" in markdown
    # Weight-free metrics are computed; the identical pair is perfect, the noisy one is not.
    per_video = {row["stem"]: row for row in result["per_video"]}
    assert per_video["same"]["psnr"] > 45 and per_video["same"]["ssim"] > 0.99
    assert per_video["noisy"]["psnr"] < per_video["same"]["psnr"] - 10
    assert per_video["noisy"]["ssim"] < per_video["same"]["ssim"]
    assert metrics["lmk_expr_fd"]["status"] == "ok" and metrics["lmk_expr_fd"]["value"] >= 0
    assert metrics["mouth_audio_corr"]["status"] == "ok" and -1 <= metrics["mouth_audio_corr"]["value"] <= 1
    assert metrics["head_mean_velocity"]["value"] > 0
    assert metrics["reference_head_mean_velocity"]["value"] == pytest.approx(
        per_video["same"]["reference_head_velocity"] / 2 + per_video["noisy"]["reference_head_velocity"] / 2,
        rel=1e-6,
    )
    assert "wrote" in capsys.readouterr().out


def test_identical_sets_score_zero_on_the_landmark_proxy(dirs, tmp_path):
    only_same = tmp_path / "gen"
    only_same.mkdir()
    shutil.copyfile(dirs / "generated" / "same.mp4", only_same / "same.mp4")
    out = tmp_path / "res.json"
    assert main(["evaluate", "--generated", str(only_same), "--reference", str(dirs / "reference"),
                 "--out", str(out), "--no-progress"]) == 0  # fmt: skip
    metrics = json.loads(out.read_text())["metrics"]
    assert metrics["lmk_expr_fd"]["value"] == pytest.approx(0.0, abs=1e-9)
    assert metrics["head_mean_velocity"]["value"] == pytest.approx(
        metrics["reference_head_mean_velocity"]["value"]
    )


def _save_random(model, path, wrap=None):
    torch.manual_seed(0)
    state = {}
    for k, v in model.state_dict().items():
        if k.endswith("running_var"):
            state[k] = torch.rand_like(v) + 0.5
        elif v.is_floating_point():
            state[k] = torch.randn_like(v) * 0.05
        else:
            state[k] = v
    torch.save({wrap: state} if wrap else state, path)
    return path


class _FakeI3D(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3, 400)

    def forward(
        self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False
    ):
        return self.proj(x.float().mean(dim=(2, 3, 4)) / 127.5 - 1)


def test_all_metrics_with_weights_in_their_public_formats(dirs, tmp_path):
    weights = tmp_path / "weights"
    weights.mkdir()
    flags = [
        "--inception", str(_save_random(inception.FIDInceptionV3(), weights / inception.WEIGHTS_NAME)),
        "--syncnet", str(_save_random(syncnet.SyncNet(), weights / syncnet.WEIGHTS_NAME)),
        "--arcface", str(_save_random(arcface.IResNet((1, 1, 1, 1)), weights / arcface.WEIGHTS_NAME)),
        "--deep3d", str(_save_random(expression.Deep3DRecon(), weights / expression.WEIGHTS_NAME, "net_recon")),
    ]  # fmt: skip
    lp = lpips.LPIPS("alex")
    torch.save({k: v for k, v in lp.state_dict().items() if k.startswith("lin")}, weights / "alex.pth")
    torch.save(
        {k: v for k, v in lp.state_dict().items() if k.startswith("features.")}, weights / "alexnet.pth"
    )
    flags += ["--lpips", str(weights / "alex.pth"), "--lpips-backbone", str(weights / "alexnet.pth")]
    torch.jit.script(_FakeI3D()).save(str(weights / i3d.WEIGHTS_NAME))
    flags += ["--i3d", str(weights / i3d.WEIGHTS_NAME)]
    only_same = tmp_path / "gen"
    only_same.mkdir()
    shutil.copyfile(dirs / "generated" / "same.mp4", only_same / "same.mp4")
    out = tmp_path / "res.json"
    assert main(["evaluate", "--generated", str(only_same), "--reference", str(dirs / "reference"),
                 "--out", str(out), "--no-progress", "--frame-stride", "16", *flags]) == 0  # fmt: skip
    result = json.loads(out.read_text())
    metrics = result["metrics"]
    for name in ("fid", "fvd", "lse_c", "lse_d", "fsim", "efid", "psnr", "ssim", "lpips"):
        assert metrics[name]["status"] == "ok" and math.isfinite(metrics[name]["value"]), name
    # The generated video is its ground truth: every Fréchet distance is 0 (a set against itself).
    for name in ("fid", "fvd", "efid"):
        assert metrics[name]["value"] == pytest.approx(0.0, abs=1e-3), name
    assert metrics["lpips"]["value"] == pytest.approx(0.0, abs=1e-6)  # identical frames
    # The reference image is the first frame: that frame's embedding matches it exactly.
    assert -100.0 <= metrics["fsim"]["value"] <= 100.0
    assert metrics["lse_c"]["value"] >= 0 and metrics["lse_d"]["value"] >= 0
    row = result["per_video"][0]
    assert abs(row["av_offset"]) <= 15
    assert "unavailable" not in out.with_suffix(".md").read_text().split("| Landmark")[0]


def test_error_paths_are_one_line_and_nonzero(dirs, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (
            ["--generated", str(tmp_path / "absent"), "--reference", str(dirs / "reference")],
            "no such directory",
        ),
        (["--generated", str(empty), "--reference", str(dirs / "reference")], "no .mp4 files"),
    ]
    unmatched = tmp_path / "unmatched"
    unmatched.mkdir()
    shutil.copyfile(dirs / "generated" / "same.mp4", unmatched / "other_name.mp4")
    cases.append((["--generated", str(unmatched), "--reference", str(dirs / "reference")], "other_name.mp4"))
    cases.append((["--generated", str(dirs / "generated"), "--reference", str(dirs / "reference"),
                   "--syncnet", str(tmp_path / "nope.model")], "--syncnet"))  # fmt: skip
    for argv, text in cases:
        assert main(["evaluate", *argv, "--out", str(tmp_path / "r.json"), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("emo: error:") and "\n" not in err and text in err, err
    # Existing results are not overwritten without --overwrite.
    (tmp_path / "r.json").write_text("{}")
    assert _run(dirs, tmp_path / "r.json") == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "r.json").read_text() == "{}"


def test_protocol_test_list_jobs_and_reference_folder(dirs, tmp_path):
    from emo.errors import EmoError
    from emo.eval.evaluate import find_pairs
    from emo.eval.protocol import generation_jobs, link_reference, read_test_list
    from emo.eval.protocol import main as protocol_main

    shutil.copyfile(dirs / "reference" / "same.mp4", tmp_path / "gt.mp4")
    shutil.copyfile(dirs / "reference" / "same.jpg", tmp_path / "portrait.jpg")
    listing = tmp_path / "test.json"
    listing.write_text(json.dumps([
        {"image": "portrait.jpg", "audio": "gt.mp4", "video": "gt.mp4"},
        {"id": "second", "image": "portrait.jpg", "audio": "gt.mp4", "video": "gt.mp4", "seed": 7},
    ]))  # fmt: skip
    items = read_test_list(listing)
    assert [(i.id, i.seed) for i in items] == [("gt", 0), ("second", 7)]  # index seeds unless given
    assert items[0].video == tmp_path / "gt.mp4"  # relative to the list
    jobs = generation_jobs(items, tmp_path / "gen")
    assert jobs[1] == {"image": str(tmp_path / "portrait.jpg"), "audio": str(tmp_path / "gt.mp4"),
                       "out": str(tmp_path / "gen" / "second.mp4"), "seed": 7}  # fmt: skip
    # The same list as CSV gives the same items.
    csv_list = tmp_path / "test.csv"
    csv_list.write_text(
        "id,image,audio,video,seed\ngt,portrait.jpg,gt.mp4,gt.mp4,\nsecond,portrait.jpg,gt.mp4,gt.mp4,7\n"
    )
    assert read_test_list(csv_list) == items
    # The reference folder pairs with generated outputs named by the jobs.
    assert protocol_main(["reference", str(listing), str(tmp_path / "ref")]) == 0
    (tmp_path / "gen").mkdir()
    for job in jobs:
        shutil.copyfile(dirs / "generated" / "noisy.mp4", job["out"])
    pairs = find_pairs(tmp_path / "gen", tmp_path / "ref")
    assert [(p.stem, p.image.name) for p in pairs] == [("gt", "gt.jpg"), ("second", "second.jpg")]
    dup = tmp_path / "dup.json"
    dup.write_text(json.dumps([{"image": "portrait.jpg", "audio": "gt.mp4", "video": "gt.mp4"}] * 2))
    with pytest.raises(EmoError, match="appears twice"):
        read_test_list(dup)
    with pytest.raises(EmoError, match="item 0 needs image, audio and video"):
        link_reference(read_test_list(_write(tmp_path / "bad.json", [{"image": "x"}])), tmp_path / "r2")


def _write(path, obj):
    path.write_text(json.dumps(obj))
    return path
