"""`emo ui` (issue 14): the jobs behind the page, and the page itself in a real (headless) Chromium.

The browser test drives Debian's chromium through Playwright (no browser download). Set
EMO_UI_SCREENSHOT=docs/ui.png to also write the finished page's screenshot for the README.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from emo.cli import main
from emo.errors import EmoError
from emo.generation.pipeline import EMOPipeline, GenerationOptions
from emo.media import iter_video_frames, load_audio, probe_video

ROOT = Path(__file__).resolve().parents[1]
PORTRAIT = ROOT / "examples" / "portrait.jpg"
SPEECH = ROOT / "tests" / "data" / "speech_en_24k_3s.wav"  # 3.0 s
FAST = GenerationOptions(steps=2, size=64, fps=10)


@pytest.fixture(scope="module")
def pipe():
    return EMOPipeline.tiny()


@pytest.fixture()
def blank(tmp_path):
    path = tmp_path / "blank.png"
    Image.fromarray(np.full((256, 256, 3), 128, np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def short_audio(tmp_path_factory):
    path = tmp_path_factory.mktemp("audio") / "speech_1s.wav"
    sf.write(path, load_audio(SPEECH)[:16000], 16000)
    return path


# -- the jobs -------------------------------------------------------------------------------------


def test_a_batch_goes_on_past_bad_tracks_and_removes_its_files(pipe, short_audio, tmp_path):
    from emo.ui.jobs import GenerationService

    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage")
    service = GenerationService(pipe, tmp_path / "work")
    (tmp_path / "work").mkdir()
    opts = GenerationOptions(steps=2, size=64, fps=10, max_duration=0.5)
    jobs = service.run("s", PORTRAIT, [corrupt, short_audio], FAST)
    first = next(jobs)
    assert first.result is None and "corrupt" in first.error and "\n" not in first.error
    second = next(jobs)
    assert second.error is None and second.result.frames == 10 and second.result.path.is_file()
    assert list(jobs) == [] and list((tmp_path / "work").iterdir()) == []  # the job's folder went with it
    (over_long,) = service.run("s", PORTRAIT, [short_audio], opts)
    assert over_long.result is None and "--max-duration" in over_long.error


def test_cancel_stops_a_job_at_the_next_step_and_leaves_nothing(pipe, short_audio, tmp_path):
    from emo.ui.jobs import Cancelled, GenerationService

    service = GenerationService(pipe, tmp_path)
    steps = []

    def on_progress(index, progress):
        steps.append(progress.step)
        assert service.cancel("me") and not service.cancel("someone else")

    with pytest.raises(Cancelled):
        list(service.run("me", PORTRAIT, [short_audio], FAST, on_progress))
    assert steps == [1] and list(tmp_path.iterdir()) == []
    assert not service.cancel("me")  # nothing runs any more


def test_page_options_are_the_generate_flags():
    from emo.generation.cli import MODEL_SET, fallback
    from emo.ui.app import OPTIONS, PORTRAIT_OPTIONS, generate_flags

    flags, defaults = generate_flags(), GenerationOptions()
    for name in PORTRAIT_OPTIONS + OPTIONS:
        # The paper's defaults, one source; size and strength are the model's own, else the same source's.
        default = fallback()[name] if name in MODEL_SET else flags[name].default
        assert default == getattr(defaults, name), name
        assert name not in MODEL_SET or flags[name].default is None, name


def test_the_page_offers_the_mouth_guidance_only_for_a_model_with_a_guide(pipe):
    from types import SimpleNamespace

    from emo.ui.app import OPTIONS, PORTRAIT_OPTIONS, build_app, options_from, page_options

    guided = SimpleNamespace(defaults={}, mouth_guide=object())  # what build_app reads of a pipeline
    assert page_options(pipe) == OPTIONS and "mouth_guidance" not in OPTIONS  # the tiny preset has none
    assert page_options(guided) == (*OPTIONS, "mouth_guidance")
    page = build_app(SimpleNamespace(pipe=guided))
    (field,) = [b for b in page.blocks.values() if getattr(b, "elem_id", None) == "mouth_guidance"]
    assert field.value == 1.0 and "lips" in field.info  # full strength, as `emo generate` uses it
    names = PORTRAIT_OPTIONS + page_options(guided)
    values = [getattr(GenerationOptions(), n) for n in PORTRAIT_OPTIONS + OPTIONS]
    assert options_from(names, [*values, 0.5]).mouth_guidance == 0.5
    with pytest.raises(EmoError, match=r"--mouth-guidance must be in \[0, 1\], got 2"):
        options_from(names, [*values, 2.0])


def test_portrait_preview_draws_the_face_and_region(blank):
    from emo.ui.app import FACE_COLOR, REGION_COLOR, portrait_preview

    picture, note = portrait_preview(str(PORTRAIT), 128, "wide", False)
    assert picture.shape == (128, 128, 3) and "face found" in note and "wide" in note
    for color in (FACE_COLOR, REGION_COLOR):
        assert (np.abs(picture.astype(int) - color).sum(axis=2) < 30).sum() > 50  # both boxes are drawn
    with pytest.raises(EmoError, match="no face found"):
        portrait_preview(str(blank), 128, "face", False)
    with pytest.raises(EmoError, match="--size must be a multiple of 8"):
        portrait_preview(str(PORTRAIT), 100, "face", False)


def test_ui_refuses_a_bad_port_in_one_line(capsys):
    assert main(["ui", "--preset", "tiny", "--port", "70000"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "emo: error: --port must be in 1-65535, got 70000"


# -- the page in a browser ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_server(url: str, server: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"emo ui exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"emo ui did not answer at {url} within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.mark.slow
def test_page_generates_a_video_and_shows_bad_input_in_a_real_browser(blank, tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("the browser test needs Debian's chromium: apt-get install chromium (.ci/run does)")
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        pytest.fail('the browser test needs Playwright: pip install -e ".[dev,ui]" (scripts/setup.sh does)')

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    server_tmp = tmp_path / "server_tmp"  # the server's temporary files: all gone when it stops
    server_tmp.mkdir()
    log = tmp_path / "server.log"
    env = {**os.environ, "TMPDIR": str(server_tmp), "GRADIO_ANALYTICS_ENABLED": "False"}
    command = [sys.executable, "-m", "emo.cli", "ui", "--preset", "tiny", "--port", str(port), "--no-cache"]
    with log.open("w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    outside: list[str] = []  # requests the page tried to send anywhere but our server
    try:
        wait_for_server(url, server, log)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium)
            page = browser.new_page(viewport={"width": 1280, "height": 1100})

            def only_local(route):
                if route.request.url.startswith(url) or route.request.url.startswith(("data:", "blob:")):
                    route.continue_()
                else:
                    outside.append(route.request.url)
                    route.abort()

            page.route("**/*", only_local)
            page.goto(url)
            page.locator("#audio input[type=file]").set_input_files(str(SPEECH))
            page.locator("#size input").fill("128")
            page.locator("#steps input").fill("2")

            # No face: the preview and Generate both show the CLI's one-line message; no traceback.
            page.locator("#portrait input[type=file]").set_input_files(str(blank))
            expect(page.locator("#preview_note")).to_contain_text("no face found in", timeout=60_000)
            page.locator("#generate").click()
            expect(page.locator("#status")).to_contain_text("Error: no face found in", timeout=60_000)
            assert "Traceback" not in page.content()

            # The server keeps serving: a portrait with a face makes the video.
            page.locator("#portrait button[aria-label='Remove Image']").first.click()
            page.locator("#portrait input[type=file]").set_input_files(str(PORTRAIT))
            expect(page.locator("#preview_note")).to_contain_text("face found:", timeout=60_000)
            expect(page.locator("#preview img")).to_be_visible()
            page.locator("#generate").click()
            expect(page.locator("#status")).to_contain_text("90 frames", timeout=180_000)
            expect(page.locator("#video video")).to_have_attribute(
                "src", re.compile(r"speech_en_24k_3s\.mp4$")
            )
            download = page.locator("#videos a")  # the download link, named after the audio
            expect(download).to_have_attribute("href", re.compile(r"speech_en_24k_3s\.mp4$"))
            source = download.get_attribute("href")
            page.wait_for_timeout(500)  # the video's first frame and the progress bar's fade-out
            page.screenshot(path=tmp_path / "ui.png", full_page=True)
            if os.environ.get("EMO_UI_SCREENSHOT"):
                shutil.copy(tmp_path / "ui.png", os.environ["EMO_UI_SCREENSHOT"])
            browser.close()

        video = tmp_path / "downloaded.mp4"
        with urllib.request.urlopen(source, timeout=30) as response:
            video.write_bytes(response.read())
        fps, frames = 30.0, math.ceil(3.0 * 30)
        info = probe_video(video)
        assert info.has_audio and (info.width, info.height) == (128, 128) and info.fps == pytest.approx(fps)
        assert sum(1 for _ in iter_video_frames(video)) == frames
        assert info.duration_s == pytest.approx(frames / fps, abs=1.5 / fps)
        assert outside == [], f"the page reached outside the server: {outside}"
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert server.returncode is not None
    assert list(server_tmp.iterdir()) == [], "emo ui left temporary files"
