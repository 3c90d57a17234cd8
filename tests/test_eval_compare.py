"""scripts/compare_checkpoints.sh: argument checks, and two tiny checkpoints compared end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "compare_checkpoints.sh"


def _run(*args, **env):
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=env)


def test_script_parses():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0


def test_bad_arguments_are_a_usage_error(tmp_path):
    (tmp_path / "list.json").write_text("[]")
    (tmp_path / "ckpt").mkdir()
    cases = [
        ((), "need TEST_LIST CKPT_A CKPT_B OUT_DIR, got 0"),
        ((tmp_path / "list.json", tmp_path / "ckpt", tmp_path / "ckpt"), "got 3"),
        ((tmp_path / "absent.json", tmp_path / "ckpt", tmp_path / "ckpt", tmp_path / "out"), "absent.json"),
        ((tmp_path / "list.json", tmp_path / "ckpt", tmp_path / "nope", tmp_path / "out"), "checkpoint"),
    ]
    for args, message in cases:
        done = _run(*args)
        assert done.returncode == 2, (args, done.stderr)
        assert "usage" not in done.stdout and "TEST_LIST CKPT_A CKPT_B OUT_DIR" in done.stderr
        assert done.stderr.strip().splitlines()[-1].startswith("error:") and message in done.stderr
    done = _run(tmp_path / "list.json", tmp_path / "ckpt", tmp_path / "ckpt", tmp_path / "out",
                PYTHON=str(tmp_path / "no-python"))  # fmt: skip
    assert done.returncode == 2 and "cannot import emo" in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_two_tiny_checkpoints_side_by_side(tmp_path):
    from emo.media import iter_video_frames, load_audio, write_video
    from emo.tiny import save_tiny_weights

    ckpt_a = save_tiny_weights(tmp_path / "ckpt_a", seed=0)
    ckpt_b = save_tiny_weights(tmp_path / "ckpt_b", seed=1)
    # One test item: 1.2 s at 10 fps and 64² (the size and rate we generate at).
    source = ROOT / "tests" / "data" / "hdtf_speech_256_4s.mp4"
    frames = [f[::4, ::4] for _, f in zip(range(30), iter_video_frames(source), strict=False)][::3][:12]
    audio = load_audio(source)[: int(1.2 * 16000)]
    write_video(tmp_path / "gt.mp4", frames, 10, audio=audio)
    sf.write(tmp_path / "gt.wav", audio, 16000)
    from emo.media import save_image

    save_image(tmp_path / "gt.png", frames[0])
    (tmp_path / "list.json").write_text(
        json.dumps([{"image": "gt.png", "audio": "gt.wav", "video": "gt.mp4"}])
    )
    done = _run(tmp_path / "list.json", ckpt_a, ckpt_b, tmp_path / "cmp", "--max-frames", "12",
                EMO_GENERATE_FLAGS="--fps 10 --size 64 --steps 1 --quiet --no-cache --device cpu")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0] == f"| metric | better | a: {ckpt_a} | b: {ckpt_b} |"
    psnr_row = next(line for line in lines if line.startswith("| PSNR (dB) |"))
    results = [json.loads((tmp_path / "cmp" / side / "evaluation.json").read_text()) for side in "ab"]
    psnr = [r["metrics"]["psnr"]["value"] for r in results]
    assert psnr_row == f"| PSNR (dB) | ↑ | {psnr[0]:.4g} | {psnr[1]:.4g} |"
    assert psnr[0] != psnr[1]  # two different random models
    assert results[0]["inputs"]["videos"] == ["gt"] and results[0]["per_video"][0]["frames"] == 12
    assert (tmp_path / "cmp" / "comparison.md").read_text() in done.stdout
    assert np.isfinite(results[1]["metrics"]["ssim"]["value"])
