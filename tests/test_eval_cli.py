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
from emo.tiny import save_random_weights

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
    control = metrics["mouth_audio_corr_other_audio"]  # each generated video against the other's audio
    assert control["status"] == "ok" and -1 <= control["value"] <= 1
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


def _default_init(build, path):
    # F-SIM needs embeddings that tell faces apart: PyTorch's default initialisation gives them, while
    # _save_random's small weights map every face to the same direction (F-SIM 100 for anything).
    torch.manual_seed(0)
    torch.save(build().state_dict(), path)
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
        "--inception", str(save_random_weights(inception.FIDInceptionV3(), weights / inception.WEIGHTS_NAME)),
        "--syncnet", str(save_random_weights(syncnet.SyncNet(), weights / syncnet.WEIGHTS_NAME)),
        "--arcface", str(_default_init(lambda: arcface.IResNet((1, 1, 1, 1)), weights / arcface.WEIGHTS_NAME)),
        "--deep3d", str(save_random_weights(expression.Deep3DRecon(), weights / expression.WEIGHTS_NAME, "net_recon")),
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
    for name in ("fid", "fvd", "lse_c", "lse_d", "fsim", "reference_fsim", "efid", "psnr", "ssim", "lpips"):
        assert metrics[name]["status"] == "ok" and math.isfinite(metrics[name]["value"]), name
    # The generated video is its ground truth: every Fréchet distance is 0 (a set against itself).
    for name in ("fid", "fvd", "efid"):
        assert metrics[name]["value"] == pytest.approx(0.0, abs=1e-3), name
    assert metrics["lpips"]["value"] == pytest.approx(0.0, abs=1e-6)  # identical frames
    # F-SIM: closer to the ground truth's F-SIM (against the same reference image) is better. The
    # generated video is its ground truth, so both are equal; below 100, as the face moves.
    fsim = metrics["fsim"]
    assert fsim["better"] == "closer" and fsim["closer_to"] == "reference_fsim"
    assert fsim["value"] == pytest.approx(metrics["reference_fsim"]["value"], rel=1e-6)
    assert 0 < fsim["value"] < 99
    row = result["per_video"][0]
    assert row["fsim"] == pytest.approx(row["reference_fsim"], rel=1e-6)
    assert "| F-SIM | " in out.with_suffix(".md").read_text()
    assert "| closer to GT |" in out.with_suffix(".md").read_text()
    assert metrics["lse_c"]["value"] >= 0 and metrics["lse_d"]["value"] >= 0
    assert abs(row["av_offset"]) <= 15
    assert "unavailable" not in out.with_suffix(".md").read_text().split("| Landmark")[0]


def test_non_finite_values_are_reported_unavailable_not_an_internal_error(tmp_path):
    from emo.eval.evaluate import Evaluation, MetricResult
    from emo.eval.report import to_markdown, write_report

    evaluation = Evaluation(
        metrics=[MetricResult("fid", "FID", "lower", value=math.nan, note="10 vs 10 samples"),
                 MetricResult("fvd", "FVD", "lower", value=math.inf),
                 MetricResult("psnr", "PSNR (dB)", "higher", value=31.5)],
        per_video=[{"stem": "a", "frames": 4, "psnr": 31.5, "ssim": math.nan, "fsim": -math.inf}],
        frames=4, seconds=1.0,
    )  # fmt: skip
    write_report(evaluation, tmp_path / "r.json", tmp_path / "r.md", {})
    result = json.loads((tmp_path / "r.json").read_text())
    for name in ("fid", "fvd"):
        m = result["metrics"][name]
        assert m["value"] is None and m["status"] == "unavailable" and "not finite" in m["note"], m
    assert "10 vs 10 samples" in result["metrics"]["fid"]["note"]  # the earlier note is kept
    assert result["metrics"]["psnr"] == {
        "value": 31.5,
        "status": "ok",
        "better": "higher",
        "label": "PSNR (dB)",
    }
    row = result["per_video"][0]
    assert row["ssim"] is None and row["fsim"] is None and row["psnr"] == 31.5
    assert row["notes"] == ["ssim was nan (not finite)", "fsim was -inf (not finite)"]
    assert "| FID | unavailable |" in (tmp_path / "r.md").read_text() == to_markdown(evaluation)


def test_a_nan_from_a_metric_still_gives_the_report(dirs, tmp_path, monkeypatch):
    import emo.eval.reconstruction

    monkeypatch.setattr(emo.eval.reconstruction, "psnr", lambda a, b: math.nan)
    only_same = tmp_path / "gen"
    only_same.mkdir()
    shutil.copyfile(dirs / "generated" / "same.mp4", only_same / "same.mp4")
    out = tmp_path / "res.json"
    assert main(["evaluate", "--generated", str(only_same), "--reference", str(dirs / "reference"),
                 "--out", str(out), "--no-progress"]) == 0  # fmt: skip
    result = json.loads(out.read_text())
    assert (
        result["metrics"]["psnr"]["status"] == "unavailable"
        and "not finite" in result["metrics"]["psnr"]["note"]
    )
    assert result["metrics"]["ssim"]["status"] == "ok"  # the rest of the evaluation stands
    assert (
        result["per_video"][0]["psnr"] is None
        and "psnr was nan (not finite)" in result["per_video"][0]["notes"]
    )


def test_tiny_frames_are_a_one_line_error_and_frame_rate_mismatch_warns_for_fvd(tmp_path, capsys, caplog):
    rng = np.random.default_rng(0)
    for size, (gen_fps, ref_fps) in ((8, (25, 25)), (64, (50, 25))):
        ref, gen = tmp_path / f"ref{size}", tmp_path / f"gen{size}"
        ref.mkdir()
        gen.mkdir()
        frames = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(16)]
        write_video(ref / "clip.mp4", frames, ref_fps)
        write_video(gen / "clip.mp4", frames, gen_fps)
    argv = ["evaluate", "--no-progress", "--generated", str(tmp_path / "gen8"), "--reference", str(tmp_path / "ref8"),
            "--out", str(tmp_path / "r8.json")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("emo: error:") and "\n" not in err and "11×11" in err and "clip.mp4" in err, err
    torch.jit.script(_FakeI3D()).save(str(tmp_path / i3d.WEIGHTS_NAME))
    argv = ["evaluate", "--no-progress", "--generated", str(tmp_path / "gen64"), "--reference", str(tmp_path / "ref64"),
            "--out", str(tmp_path / "r64.json"), "--i3d", str(tmp_path / i3d.WEIGHTS_NAME)]  # fmt: skip
    with caplog.at_level("WARNING", logger="emo.eval.i3d"):
        assert main(argv) == 0
    assert any("50 fps, ground truth at 25 fps" in r.getMessage() for r in caplog.records), caplog.text
    assert (
        "50 fps vs ground truth 25"
        in json.loads((tmp_path / "r64.json").read_text())["metrics"]["fvd"]["note"]
    )


def test_side_by_side_table_of_two_evaluations(tmp_path, capsys):
    def report_main(argv):
        return main(["evaluate", "report", *argv])

    def result(fid, fsim):
        return {"metrics": {
            "fid": {"value": fid, "status": "ok" if fid is not None else "unavailable", "better": "lower", "label": "FID"},
            "fsim": {"value": fsim, "status": "ok", "better": "closer", "label": "F-SIM", "closer_to": "reference_fsim"},
        }}  # fmt: skip

    (tmp_path / "a.json").write_text(json.dumps(result(12.5, 80.0)))
    (tmp_path / "b.json").write_text(json.dumps(result(None, 77.25)))
    assert (
        report_main([str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--names", "a: ckpt1", "b: ckpt2"])
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| metric | better | a: ckpt1 | b: ckpt2 |"
    assert lines[2:] == ["| FID | ↓ | 12.5 | unavailable |", "| F-SIM | closer to GT | 80 | 77.25 |"]
    assert report_main([str(tmp_path / "a.json"), "--names", "x", "y"]) == 2
    (tmp_path / "bad.json").write_text("{")
    assert report_main([str(tmp_path / "bad.json")]) == 2
    assert "bad.json" in capsys.readouterr().err


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

    def protocol_main(argv):
        return main(["evaluate", "protocol", *argv])

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
