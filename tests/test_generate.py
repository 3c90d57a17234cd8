"""`emo generate` (issue 4): the pipeline and the CLI on the tiny preset with real fixture media."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch

from emo.conditioning.face import lower_face_mask
from emo.errors import EmoError
from emo.generation.pipeline import EMOPipeline, GenerationOptions, clip_window
from emo.media import VideoWriter, iter_video_frames, load_audio, probe_video
from emo.sampling import combine_guidance, guidance_plan, sample, steps_run
from emo.tiny import save_tiny_weights

ROOT = Path(__file__).resolve().parents[1]
PORTRAIT = ROOT / "examples" / "portrait.jpg"
SPEECH = ROOT / "examples" / "speech.wav"
# Small and fast: 64² output, 2 steps, 10 fps -> 1.5 s of audio is 15 frames = 2 clips of 12.
FAST = GenerationOptions(steps=2, size=64, fps=10, clip_frames=12, motion_frames=4)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return save_tiny_weights(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="module")
def short_audio(tmp_path_factory):
    path = tmp_path_factory.mktemp("audio") / "speech_1.5s.wav"
    sf.write(path, load_audio(SPEECH)[: int(1.5 * 16000)], 16000)
    return path


@pytest.fixture()
def pipe(weights):
    return EMOPipeline.from_weights(weights)


def frames_of(path: Path) -> np.ndarray:
    return np.stack(list(iter_video_frames(path)))


def record_frames(pipe) -> list[torch.Tensor]:
    """The frames `pipe` decodes (the VAE decoder's output, chunk by chunk), before H.264: their
    comparison is exact, while a decoded P-frame also depends on the (lossy) frames it was predicted from."""
    chunks = []
    pipe.codec.vae.decoder.register_forward_hook(lambda _, args, out: chunks.append(out.detach().clone()))
    return chunks


def test_video_has_the_right_frames_fps_size_and_audio(pipe, short_audio, tmp_path):
    out = tmp_path / "out.mp4"
    result = pipe.generate(PORTRAIT, short_audio, out, FAST, progress=False)
    info = probe_video(out)
    expected_frames = math.ceil(1.5 * FAST.fps)
    assert result.frames == expected_frames == len(frames_of(out))
    assert result.clips == 2
    assert (info.width, info.height) == (64, 64) and info.fps == pytest.approx(FAST.fps)
    assert info.has_audio
    with av.open(str(out)) as container:
        stream = container.streams.audio[0]
        audio_seconds = float(stream.duration * stream.time_base)
    assert audio_seconds == pytest.approx(1.5, abs=0.1)
    assert not list(tmp_path.glob("*.tmp*")) and sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]


def test_same_seed_same_frames_other_seed_other_frames(pipe, short_audio, tmp_path):
    a, b, c = (tmp_path / f"{n}.mp4" for n in "abc")
    pipe.generate(PORTRAIT, short_audio, a, FAST, progress=False)
    pipe.generate(PORTRAIT, short_audio, b, FAST, progress=False)
    from dataclasses import replace

    pipe.generate(PORTRAIT, short_audio, c, replace(FAST, seed=1), progress=False)
    assert np.array_equal(frames_of(a), frames_of(b))
    assert not np.array_equal(frames_of(a), frames_of(c))


@pytest.mark.parametrize("guidance", [(1.0, 1.0), (2.0, 3.0)])
def test_reference_net_runs_once_per_clip(pipe, short_audio, tmp_path, guidance):
    from dataclasses import replace

    calls = []  # the ReferenceNet's first layer runs once per ReferenceNet pass
    pipe.model.reference_net.conv_in.register_forward_pre_hook(lambda *_: calls.append(1))
    opts = replace(FAST, reference_guidance=guidance[0], audio_guidance=guidance[1])
    result = pipe.generate(PORTRAIT, short_audio, tmp_path / "o.mp4", opts, progress=False)
    assert len(calls) == result.clips == 2


@pytest.mark.parametrize("motion_frames", [4, 0])
def test_first_clip_reaches_the_second_through_motion_frames(weights, short_audio, tmp_path, motion_frames):
    """Change the audio of clip 1 only (outside clip 2's audio window): clip 2 changes iff motion frames carry."""
    from dataclasses import replace

    opts = replace(FAST, motion_frames=motion_frames)
    videos = []
    for bump in (0.0, 3.0):
        pipe = EMOPipeline.from_weights(weights)
        prepare = pipe.prepare_audio

        def bumped(path, o, prepare=prepare, bump=bump):
            waveform, features = prepare(path, o)
            features = features.clone()
            features[:8] += bump  # frames 0-7; clip 2 (frames 12-23) sees audio frames 10+ at most
            return waveform, features

        pipe.prepare_audio = bumped
        frames = record_frames(pipe)
        pipe.generate(PORTRAIT, short_audio, tmp_path / f"m{motion_frames}_{bump}.mp4", opts, progress=False)
        videos.append(torch.cat(frames))  # (frames, 3, H, W)
    first_clip_changed = not torch.equal(videos[0][:8], videos[1][:8])
    second_clip_changed = not torch.equal(videos[0][12:], videos[1][12:])
    assert first_clip_changed
    assert second_clip_changed == (motion_frames > 0)


def test_region_and_speed_reach_the_network(pipe, short_audio, tmp_path):
    from dataclasses import replace

    seen = []

    class FirstCall(Exception):
        pass

    def stop_at_the_first_call(_, args):  # the rest of the video is not needed: stop there
        seen.append(args[2])  # model(noisy, timesteps, cond, reference)
        raise FirstCall

    pipe.model.register_forward_pre_hook(stop_at_the_first_call)

    def first_cond(**changes):
        seen.clear()
        with pytest.raises(FirstCall):
            pipe.generate(PORTRAIT, short_audio, tmp_path / "o.mp4", replace(FAST, **changes), progress=False)
        return seen[0]

    face, full = first_cond(region="face"), first_cond(region="full")
    assert face.face_mask.sum() < full.face_mask.sum() == full.face_mask.numel()
    slow, fast = first_cond(speed=0.2), first_cond(speed=1.2)
    assert torch.all(slow.speed == 0.2) and torch.all(fast.speed == 1.2)
    emb = pipe.model.speed_encoder
    assert not torch.allclose(emb(slow.speed[0]), emb(fast.speed[0]))


def test_guidance_plan_combines_as_documented():
    e00, e10, e11, e01 = (torch.full((1,), v) for v in (1.0, 2.0, 4.0, 3.0))
    eps = {(False, False): e00, (True, False): e10, (True, True): e11, (False, True): e01}
    for s_ref, s_audio in [(1.0, 1.0), (1.0, 3.0), (2.0, 1.0), (2.0, 3.0)]:
        passes, weights = guidance_plan(s_ref, s_audio)
        got = sum(w * eps[p] for p, w in zip(passes, weights))
        if s_audio == 1.0 and s_ref != 1.0:
            expected = e01 + s_ref * (e11 - e01)
        else:
            expected = (
                e00 + s_ref * (e10 - e00) + s_audio * (e11 - e10)
                if s_ref != 1.0
                else e10 + s_audio * (e11 - e10)
            )
        assert torch.allclose(got, expected)
    assert guidance_plan(1.0, 1.0)[0] == [(True, True)]  # guidance off costs one pass
    # With a region, the audio scale holds inside it; outside, the audio acts as trained (scale 1).
    region = torch.tensor([[1.0, 0.0]])  # (h, w) = (1, 2)
    for s_ref in (1.0, 2.0):
        passes, weights = guidance_plan(s_ref, 3.0, region)
        got = sum(w * eps[p] for p, w in zip(passes, weights))
        guided, plain = (sum(w * eps[p] for p, w in zip(*guidance_plan(s_ref, a))) for a in (3.0, 1.0))
        assert torch.allclose(got, torch.cat([guided, plain])[None])


def test_audio_guidance_over_the_mouth_leaves_the_rest_of_the_frame_unguided(pipe, short_audio, tmp_path):
    """--audio-guidance-region mouth: the first guided prediction is the unguided one outside the lower face
    (lower_face_mask around the portrait's mouth), and differs inside it."""
    from dataclasses import replace

    import emo.generation.pipeline as pipeline

    class FirstPrediction(Exception):
        pass

    def first_prediction(**changes) -> torch.Tensor:
        def stop(eps, weights):
            raise FirstPrediction(combine_guidance(eps, weights))

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(pipeline, "combine_guidance", stop)
            with pytest.raises(FirstPrediction) as caught:
                opts = replace(FAST, **changes)
                pipe.generate(PORTRAIT, short_audio, tmp_path / "o.mp4", opts, progress=False)
        return caught.value.args[0][0]  # (f, C, h, w)

    plain = first_prediction()
    mouth = first_prediction(audio_guidance=3.0, audio_guidance_region="mouth")
    frame = first_prediction(audio_guidance=3.0, audio_guidance_region="frame")
    portrait = pipe.prepare_portrait(PORTRAIT, FAST)
    region = torch.from_numpy(lower_face_mask(portrait.mouth_box, *plain.shape[-2:])).bool()
    assert 0 < region.sum() < region.numel() / 2  # the lower face, not the frame
    assert torch.allclose(mouth[..., ~region], plain[..., ~region], atol=1e-5)
    assert torch.allclose(mouth[..., region], frame[..., region], atol=1e-5)
    assert not torch.allclose(mouth[..., region], plain[..., region], atol=1e-3)
    assert not torch.allclose(frame[..., ~region], plain[..., ~region], atol=1e-3)


@pytest.mark.parametrize("sampler", ["ddim", "dpm++"])
def test_strength_starts_from_the_noised_start_and_runs_the_last_steps(sampler):
    """SDEdit: strength s runs the last s share of the steps from `start` noised to that point; with a
    perfect denoiser (it knows the noise) the result is the start, and lower strength stays closer to it."""
    start = torch.randn(1, 2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(1, 2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    seen = []
    zero = sample(lambda x, t: torch.zeros_like(x), noise, sampler, 20, lambda i, t, x: seen.append(int(t)),
                  start=start, strength=0.4)  # fmt: skip
    assert len(seen) == steps_run(20, 0.4) == 8 and seen == sorted(seen, reverse=True) and seen[0] < 500
    oracle = sample(lambda x, t: noise, noise, sampler, 20, start=start, strength=0.4)
    assert (oracle - start).abs().mean() < 0.05  # the last step keeps SD's sqrt(1 - ᾱ_0) of the noise
    far = sample(lambda x, t: torch.zeros_like(x), noise, sampler, 20, start=start, strength=0.9)
    assert (zero - start).abs().mean() < (far - start).abs().mean()
    with pytest.raises(EmoError, match="--strength"):
        GenerationOptions(strength=0.0).validate()


@pytest.mark.parametrize("sampler", ["ddim", "dpm++"])
def test_a_v_prediction_denoiser_samples_its_clean_latents(sampler):
    """`prediction: v_prediction`: a denoiser that returns the true v for known clean latents x0
    (v = α·ε − σ·x0, with ε = (x_t − α·x0) / σ) samples x0, as an ε oracle does for ε-prediction."""
    from emo.sampling import prediction_target, training_schedule

    alphas = training_schedule().alphas_cumprod
    clean = torch.randn(1, 2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(1, 2, 4, 8, 8, generator=torch.Generator().manual_seed(1))

    def oracle(x, t):
        a, s = alphas[int(t)].sqrt(), (1 - alphas[int(t)]).sqrt()
        return a * (x - a * clean) / s - s * clean

    # Training's target is the same v: at any t, prediction_target gives what the oracle returns.
    schedule, t = training_schedule(), torch.tensor([700])
    noisy = schedule.add_noise(clean, noise, t)
    assert torch.allclose(
        prediction_target(schedule, clean, noise, t, "v_prediction"), oracle(noisy, t), atol=1e-5
    )
    error = (sample(oracle, noise, sampler, 20, prediction="v_prediction") - clean).abs().mean()
    assert error < 0.05  # DDIM's last step keeps SD's sqrt(1 - ᾱ_0) of the noise
    misread = (sample(oracle, noise, sampler, 20) - clean).abs().mean()  # the same outputs read as ε
    assert misread > 2 * error + 0.03


def portrait_gap(weights, audio, out, denoised: str, monkeypatch) -> float:
    """Generate with a network that predicts "no difference" (the ε that makes x0 = 0) on a ``denoised``
    model; -> the decoded latents' mean distance to the portrait's latent, relative to its size."""
    from emo.sampling import training_schedule

    alphas = training_schedule().alphas_cumprod
    pipe = EMOPipeline.from_weights(weights)
    pipe.model.denoised, pipe.model.residual_scale = denoised, 10.0
    monkeypatch.setattr(  # ε = x_t / sqrt(1 - ᾱ_t)  <=>  x0 = 0
        pipe.model,
        "forward",
        lambda x, t, *_: x / (1 - alphas[t.long().cpu()]).sqrt().to(x)[:, None, None, None, None],
    )
    portrait, decoded = [], []
    encode, decode = pipe.encode_image, pipe.codec.decode
    monkeypatch.setattr(pipe, "encode_image", lambda image: portrait.append(encode(image)) or portrait[-1])
    monkeypatch.setattr(pipe.codec, "decode", lambda z: decoded.append(z) or decode(z))
    pipe.generate(PORTRAIT, audio, out, FAST, progress=False)
    latents = torch.cat(decoded)
    assert latents.shape[0] == 15
    return ((latents - portrait[0]).abs().mean() / portrait[0].abs().mean()).item()


def test_a_residual_model_generates_around_the_portrait(weights, short_audio, tmp_path, monkeypatch):
    """`denoised: residual`: the network denoises frame − portrait latent and the pipeline adds the portrait
    back, so a network that predicts "no difference" gives the portrait in every frame (up to the noise SD's
    last DDIM step keeps, sqrt(1 - ᾱ_0), divided by the scale); on a frames model it gives near-zero latents."""
    assert portrait_gap(weights, short_audio, tmp_path / "residual.mp4", "residual", monkeypatch) < 0.2
    assert portrait_gap(weights, short_audio, tmp_path / "frames.mp4", "frames", monkeypatch) > 0.5


def test_bfloat16_runs_on_cpu(weights, short_audio, tmp_path):
    pipe = EMOPipeline.from_weights(weights, dtype=torch.bfloat16)
    decoded = record_frames(pipe)
    result = pipe.generate(PORTRAIT, short_audio, tmp_path / "bf16.mp4", FAST, progress=False)
    assert result.frames == 15
    # Every frame finite, looked at before uint8: a NaN or inf would still give some pixel value.
    frames = torch.cat(decoded)
    assert frames.shape[0] == 15 and torch.isfinite(frames).all()


def test_dpm_solver_runs_end_to_end(pipe, short_audio, tmp_path):
    from dataclasses import replace

    ddim, dpm = tmp_path / "ddim.mp4", tmp_path / "dpm.mp4"
    pipe.generate(PORTRAIT, short_audio, ddim, FAST, progress=False)
    result = pipe.generate(PORTRAIT, short_audio, dpm, replace(FAST, sampler="dpm++"), progress=False)
    frames = frames_of(dpm)
    assert result.frames == len(frames) == math.ceil(1.5 * FAST.fps)
    assert not np.array_equal(frames, frames_of(ddim))


def test_vae_encodes_once_per_video_and_decodes_in_chunks(pipe, short_audio, tmp_path):
    from dataclasses import replace

    encoded, decoded = [], []
    vae = pipe.codec.vae  # hooks on the VAE's encoder / decoder networks count their batch sizes
    hooks = [
        vae.encoder.register_forward_pre_hook(lambda _, args: encoded.append(args[0].shape[0])),
        vae.decoder.register_forward_pre_hook(lambda _, args: decoded.append(args[0].shape[0])),
    ]
    opts = replace(FAST, decode_chunk=5)
    try:
        for name in ("a", "b"):
            pipe.generate(PORTRAIT, short_audio, tmp_path / f"{name}.mp4", opts, progress=False)
    finally:
        for hook in hooks:
            hook.remove()
    assert encoded == [1, 1]  # the portrait, once per video
    # Per video: clip 1 keeps 12 frames (5 + 5 + 2), the trimmed clip 2 keeps 3.
    assert decoded == [5, 5, 2, 3] * 2


def test_progress_callback_follows_every_step_and_can_cancel(pipe, short_audio, tmp_path):
    from emo.generation.pipeline import GenerationProgress

    seen: list[GenerationProgress] = []
    pipe.generate(PORTRAIT, short_audio, tmp_path / "a.mp4", FAST, progress=False, callback=seen.append)
    clips = math.ceil(math.ceil(1.5 * FAST.fps) / FAST.clip_frames)
    assert [p.step for p in seen] == list(range(1, clips * FAST.steps + 1))
    assert [p.clip for p in seen] == [c for c in range(clips) for _ in range(FAST.steps)]
    assert seen[-1].fraction == 1.0 and {p.clips for p in seen} == {clips}

    class Cancelled(Exception):
        pass

    def cancel(progress):
        if progress.step == FAST.steps + 1:  # in the second clip, after the first was written
            raise Cancelled

    with pytest.raises(Cancelled):
        pipe.generate(PORTRAIT, short_audio, tmp_path / "b.mp4", FAST, progress=False, callback=cancel)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4"]  # no output, no temporary file


@pytest.mark.parametrize("total", [1, 5, 11, 12, 15, 24, 25])
@pytest.mark.parametrize("f, m", [(12, 2), (4, 2), (1, 2), (12, 0), (3, 4)])
def test_clip_windows_are_the_whole_track_windows(total, f, m):
    """Each clip's windows equal the old whole-track window(), padded to full clips with its last row."""
    from emo.conditioning.windows import window

    features = torch.randn(total, 3, 4)  # (F, L, D)
    clips = math.ceil(total / f)
    whole = window(features, m)  # (F, 2m+1, L, D)
    whole = torch.cat([whole, whole[-1:].expand(clips * f - total, *whole.shape[1:])])
    for clip in range(clips):
        assert torch.equal(clip_window(features, clip * f, f, m), whole[clip * f : (clip + 1) * f])


def test_audio_held_is_one_row_per_frame_and_windows_one_clip(weights, tmp_path):
    """No tensor of audio features is a whole-track window: the track is held once as (F, L, D) and the model
    gets (passes, f, 2m+1, L, D) per clip, however long the audio."""
    from dataclasses import replace

    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    pipe = EMOPipeline.from_weights(weights)
    cfg = pipe.model.audio_projector.config
    per_frame = (cfg.num_layers, cfg.feature_dim)

    class AudioShapes(TorchDispatchMode):  # the shape of every tensor of audio features any op makes
        shapes: list = []
        recording = True

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                is_audio = isinstance(t, torch.Tensor) and t.ndim >= 3 and tuple(t.shape[-2:]) == per_frame
                if is_audio and self.recording:
                    self.shapes.append(tuple(t.shape))
            return out

    # Not inside the audio encoder: its 50 Hz features are its own business (encoded chunk by chunk).
    frame_features = pipe.audio_encoder.frame_features

    def encoder_unrecorded(*args, **kwargs):
        mode.recording = False
        try:
            return frame_features(*args, **kwargs)
        finally:
            mode.recording = True

    pipe.audio_encoder.frame_features = encoder_unrecorded

    audio = tmp_path / "speech_3s.wav"
    sf.write(audio, load_audio(SPEECH)[: 3 * 16000], 16000)
    opts = replace(FAST, audio_guidance=2.0)  # two passes: audio on and off
    total, f, passes = 30, opts.clip_frames, 2
    handed = []  # model(noisy, timesteps, cond, reference): the audio of each call's Conditioning
    pipe.model.register_forward_pre_hook(lambda _, args: handed.append(args[2].audio.shape))
    with AudioShapes() as mode:
        pipe.generate(PORTRAIT, audio, tmp_path / "o.mp4", opts, progress=False)
    assert set(handed) == {(passes, f, cfg.window, *per_frame)}
    assert (f, cfg.window, *per_frame) in mode.shapes  # a clip's windows were seen being made
    biggest = max(math.prod(shape) for shape in mode.shapes) // math.prod(per_frame)  # in frame rows
    assert biggest <= max(total, passes * f * cfg.window)  # not total * window (a whole-track window)


def test_tiny_pipeline_with_wav2vec2_base_shaped_audio(short_audio, tmp_path):
    """`emo bench generate --audio-shape base`: the tiny model reads 13 x 768 features, as wav2vec2-base gives."""
    pipe = EMOPipeline.tiny(audio_shape="base")
    _, features = pipe.prepare_audio(short_audio, FAST)
    assert (
        features.shape == (15, 13, 768) and features.dtype == torch.float16
    )  # as emo preprocess stores them
    assert pipe.generate(PORTRAIT, short_audio, tmp_path / "o.mp4", FAST, progress=False).frames == 15


# -- errors ----------------------------------------------------------------------------------------------
def test_existing_output_is_kept(pipe, short_audio, tmp_path):
    out = tmp_path / "keep.mp4"
    out.write_bytes(b"precious")
    with pytest.raises(EmoError, match="--overwrite"):
        pipe.generate(PORTRAIT, short_audio, out, FAST, progress=False)
    assert out.read_bytes() == b"precious"


def test_no_face_fails_without_partial_output(pipe, short_audio, tmp_path):
    blank = tmp_path / "blank.png"
    from PIL import Image

    Image.fromarray(np.full((256, 256, 3), 128, np.uint8)).save(blank)
    with pytest.raises(EmoError, match="--region"):
        pipe.generate(blank, short_audio, tmp_path / "x.mp4", FAST, progress=False)
    assert not (tmp_path / "x.mp4").exists() and not list(tmp_path.glob("*.tmp*"))


def test_portrait_is_read_before_the_audio(pipe, short_audio, tmp_path):
    """A portrait without a face fails before the wav2vec2 pass over the (maybe long) audio."""
    from PIL import Image

    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((256, 256, 3), 128, np.uint8)).save(blank)
    calls = []
    pipe.prepare_audio = lambda *a, **k: calls.append(1)
    with pytest.raises(EmoError, match="no face"):
        pipe.generate(blank, short_audio, tmp_path / "new" / "x.mp4", FAST, progress=False)
    assert calls == [] and not (tmp_path / "new").exists()


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(motion_frames=13), "motion frames"),
        (dict(region="70,0,90,20"), "outside the 64² crop"),
        (dict(region="0,64,10,80"), "outside the 64² crop"),
        (dict(seed=2**64), "--seed"),
        (dict(audio_guidance_region="lips"), "--audio-guidance-region must be one of frame, mouth"),
    ],
)
def test_options_are_checked(changes, message):
    from dataclasses import replace

    with pytest.raises(EmoError, match=message):
        replace(FAST, **changes).validate()
    replace(FAST, motion_frames=12, region="60,60,80,80").validate()  # a box partly inside is clipped


def test_a_gpu_that_is_not_there_is_a_clear_error(monkeypatch):
    from emo.devices import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(EmoError, match=r"--device cuda:7: this machine has 2 CUDA GPU\(s\)"):
        resolve_device("cuda:7")


def test_missing_checkpoint_component(weights, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(weights, broken)
    shutil.rmtree(broken / "speed_encoder")
    with pytest.raises(EmoError, match="speed_encoder"):
        EMOPipeline.from_weights(broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(EmoError, match="--codec"):
        EMOPipeline.from_weights(broken)


def run_cli(*args):
    """`python -m emo.cli generate ARGS`: a real process, its own interpreter and native libraries."""
    return subprocess.run(
        [sys.executable, "-m", "emo.cli", "generate", *map(str, args)], capture_output=True, text=True
    )


@pytest.fixture()
def emo_generate(capfd, caplog):
    """`emo generate ARGS` in this process, as `run_cli` gives it back (no interpreter start and torch
    import per call): the exit status, stdout, and stderr with each log record as the terminal shows it."""
    from emo.cli import main

    def run(*args):
        capfd.readouterr()
        caplog.clear()
        with caplog.at_level(logging.INFO):  # what `emo`'s logging setup would print (INFO and up)
            code = main(["generate", *map(str, args)])
        out, err = capfd.readouterr()
        err += "".join(f"{record.getMessage()}\n" for record in caplog.records)
        return subprocess.CompletedProcess(args, code, out, err)

    return run


def test_cli_end_to_end_and_batch(weights, short_audio, tmp_path, emo_generate):
    out = tmp_path / "cli.mp4"
    done = run_cli(
        "--weights",
        weights,
        "--image",
        PORTRAIT,
        "--audio",
        short_audio,
        "--out",
        out,
        "--steps",
        2,
        "--size",
        64,
        "--fps",
        10,
        "--quiet",
    )
    assert done.returncode == 0, done.stderr
    assert "15 frames" in done.stdout and out.is_file()

    jobs = tmp_path / "jobs.json"
    jobs.write_text(
        f'[{{"image": "{PORTRAIT}", "audio": "{short_audio}", "out": "{tmp_path / "j1.mp4"}"}},'
        f' {{"image": "{PORTRAIT}", "audio": "{short_audio}", "out": "{tmp_path / "j2.mp4"}", "seed": 3}}]'
    )
    done = emo_generate(
        "--weights", weights, "--batch", jobs, "--steps", 1, "--size", 64, "--fps", 10, "--quiet"
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "j1.mp4").is_file() and (tmp_path / "j2.mp4").is_file()


def test_a_checkpoint_sets_its_own_size_strength_and_guidance_unless_given(weights, tmp_path):
    """--size, --strength and the audio guidance default to what the checkpoint says (training_config.json,
    generation.json)."""
    import argparse
    import shutil

    from emo.generation.cli import add_arguments, model_options

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    own = tmp_path / "own"
    shutil.copytree(weights, own)
    unguided = {"audio_guidance": 1.0, "audio_guidance_region": "frame"}
    assert model_options(parser.parse_args(["--weights", str(own)])) == {
        "size": 512,
        "strength": 1.0,
        **unguided,
    }
    (own / "training_config.json").write_text(json.dumps({"data": {"size": 96}}))
    guided = {"audio_guidance": 3.0, "audio_guidance_region": "mouth"}
    (own / "generation.json").write_text(json.dumps({"strength": 0.5, **guided}))
    assert model_options(parser.parse_args(["--weights", str(own)])) == {
        "size": 96,
        "strength": 0.5,
        **guided,
    }
    given = parser.parse_args(["--weights", str(own), "--size", "64", "--strength", "0.9", "--audio-guidance",
                               "2", "--audio-guidance-region", "frame"])  # fmt: skip
    assert model_options(given) == {
        "size": 64,
        "strength": 0.9,
        "audio_guidance": 2.0,
        "audio_guidance_region": "frame",
    }
    assert model_options(parser.parse_args(["--preset", "tiny"])) == {
        "size": 512,
        "strength": 1.0,
        **unguided,
    }
    (own / "generation.json").write_text(json.dumps({"strenght": 0.5}))
    with pytest.raises(EmoError, match="unknown generation options"):
        model_options(parser.parse_args(["--weights", str(own)]))
    (own / "generation.json").write_text("0.5")
    with pytest.raises(EmoError, match="not a JSON object"):
        model_options(parser.parse_args(["--weights", str(own)]))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--steps", "0"], "--steps"),
        (["--region", "middle"], "region"),
        (["--size", "100"], "--size"),
        (["--audio", "/nonexistent.wav"], "nonexistent.wav"),
        (["--region", "70,70,90,90"], "outside the 64² crop"),
        (["--device", "cuda:7"], "--device"),
    ],
)
def test_cli_bad_input_is_one_line_and_nonzero(weights, short_audio, tmp_path, args, message, emo_generate):
    base = {
        "--weights": str(weights),
        "--image": str(PORTRAIT),
        "--audio": str(short_audio),
        "--out": str(tmp_path / "o.mp4"),
        "--size": "64",
        "--steps": "1",
    }
    base.update(dict(zip(args[::2], args[1::2])))
    done = emo_generate(*[x for kv in base.items() for x in kv], "--quiet")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("emo: error:") and message in lines[0]
    assert "Traceback" not in done.stderr and not (tmp_path / "o.mp4").exists()


def test_cli_csv_batch_and_the_tiny_preset_notice(short_audio, tmp_path, emo_generate):
    jobs = tmp_path / "jobs.csv"
    jobs.write_text(
        "image,audio,out,seed,speed,region\n"
        f"{PORTRAIT},{short_audio},{tmp_path / 'a.mp4'},3,0.2,full\n"
        f"{PORTRAIT},{short_audio},{tmp_path / 'b.mp4'},,,\n"  # empty cells: the command-line values
    )
    done = emo_generate(
        "--preset", "tiny", "--batch", jobs, "--steps", 1, "--size", 64, "--fps", 10, "--quiet"
    )
    assert done.returncode == 0, done.stderr
    assert "RANDOM tiny model" in done.stdout and "--weights" in done.stdout  # says it is a smoke run
    assert done.stdout.count("15 frames") == 2
    a, b = frames_of(tmp_path / "a.mp4"), frames_of(tmp_path / "b.mp4")
    assert len(a) == len(b) == 15 and not np.array_equal(a, b)  # the row's seed, speed and region were used


def test_batch_values_are_checked_and_coerced(tmp_path):
    import json

    from emo.generation.cli import read_jobs

    files = {"image": "p.png", "audio": "s.wav"}
    csv = tmp_path / "jobs.csv"
    csv.write_text(
        "image,audio,out,seed,speed,region\np.png,s.wav,a.mp4,3,1.1,wide\np.png,s.wav,b.mp4,4.0,, \n"
    )
    assert read_jobs(csv) == [
        {**files, "out": "a.mp4", "seed": 3, "speed": 1.1, "region": "wide"},
        {**files, "out": "b.mp4", "seed": 4},
    ]
    js = tmp_path / "jobs.json"
    js.write_text(json.dumps([{**files, "out": "a.mp4", "seed": 2.0, "speed": 1, "region": None}]))
    assert read_jobs(js) == [{**files, "out": "a.mp4", "seed": 2, "speed": 1.0}]


@pytest.mark.parametrize(
    "second, message",
    [
        ({"seed": "abc"}, "job 2: seed must be an integer"),
        ({"seed": 1.5}, "job 2: seed must be an integer"),
        ({"seed": "1.5"}, "job 2: seed must be an integer"),
        ({"seed": True}, "job 2: seed must be an integer"),
        ({"speed": "fast"}, "job 2: speed must be a finite number"),
        ({"speed": float("nan")}, "job 2: speed must be a finite number"),
        ({"region": "middle"}, "job 2: --region 'middle' is not valid"),
        ({"region": 3}, "job 2: region must be"),
        ({"image": ""}, "job 2: image must be a file path"),
        ({"audio": ["s.wav"]}, "job 2: audio must be a file path"),
        ({"out": None}, "job 2 has no out"),
        ({"fps": 25}, "job 2 has unknown field(s) fps"),
        ({"out": "a.mp4"}, "jobs 1 and 2 both write a.mp4"),
        ({"out": "./sub/../a.mp4"}, "jobs 1 and 2 both write"),
    ],
)
def test_bad_batch_values_name_the_job_and_field(tmp_path, monkeypatch, second, message):
    import json

    from emo.generation.cli import read_jobs

    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    jobs = [
        {"image": "p.png", "audio": "s.wav", "out": "a.mp4"},
        {"image": "p.png", "audio": "s.wav", "out": "b.mp4"},
    ]
    jobs[1].update(second)
    path = tmp_path / "jobs.json"
    path.write_text(json.dumps(jobs))
    with pytest.raises(EmoError) as error:
        read_jobs(path)
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    "rows, message",
    [
        ("p.png,s.wav\n", "job 1 has no out"),
        ("p.png,s.wav,a.mp4,1,extra\n", "job 1 has more cells than the header"),
        ("p.png,s.wav,a.mp4,x\n", "job 1: seed must be an integer, got 'x'"),
    ],
)
def test_bad_csv_rows_name_the_job(tmp_path, rows, message):
    from emo.generation.cli import read_jobs

    path = tmp_path / "jobs.csv"
    path.write_text("image,audio,out,seed\n" + rows)
    with pytest.raises(EmoError, match=message.replace("(", r"\(")):
        read_jobs(path)


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"seed": "abc"}, "job 2: seed"),
        ({"speed": 9}, "job 2: --speed must be in"),
        ({"region": "70,70,90,90"}, "job 2: --region"),
    ],
)
def test_cli_bad_batch_job_fails_before_the_model_loads(short_audio, tmp_path, bad, message, emo_generate):
    import json

    jobs = [
        {"image": str(PORTRAIT), "audio": str(short_audio), "out": str(tmp_path / f"{i}" / "o.mp4")}
        for i in (1, 2)
    ]
    jobs[1].update(bad)
    path = tmp_path / "jobs.json"
    path.write_text(json.dumps(jobs))
    # A --weights folder that does not exist: had the model been loaded first, that would be the error.
    done = emo_generate("--weights", tmp_path / "no-weights", "--batch", path, "--size", 64, "--quiet")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("emo: error: --batch") and message in lines[0], lines
    assert not list(tmp_path.glob("*/o.mp4")) and not (tmp_path / "1").exists()


def test_cli_missing_input_creates_no_output_folder(weights, tmp_path, emo_generate):
    out = tmp_path / "new" / "dir" / "o.mp4"
    done = emo_generate(
        "--weights", weights, "--image", PORTRAIT, "--audio", tmp_path / "none.wav", "--out", out, "--quiet"
    )
    assert done.returncode == 2 and "none.wav" in done.stderr
    assert not (tmp_path / "new").exists()
    done = emo_generate(
        "--weights", weights, "--image", PORTRAIT, "--audio", tmp_path, "--out", out, "--quiet"
    )
    assert done.returncode == 2 and done.stderr.strip() == f"emo: error: audio path is not a file: {tmp_path}"
    assert not (tmp_path / "new").exists()


def test_an_output_not_named_as_a_video_fails_before_the_work(weights, short_audio, tmp_path, emo_generate):
    out = tmp_path / "new" / "o.txt"
    done = emo_generate(
        "--weights", weights, "--image", PORTRAIT, "--audio", short_audio, "--out", out, "--quiet"
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert (
        lines[0]
        == f"emo: error: {out}: the video is written as mp4 or mov; name it e.g. {out.with_suffix('.mp4')}"
    )
    assert not (tmp_path / "new").exists()
    # The writer itself keeps the rule for every other caller; .mov is the other container it makes.
    with pytest.raises(EmoError, match="name it e.g."):
        VideoWriter(tmp_path / "clip.avi", fps=10, width=32, height=32)
    VideoWriter(tmp_path / "clip.mov", fps=10, width=32, height=32)


@pytest.mark.parametrize("kind", ["image", "audio"])
def test_cli_corrupt_input_is_one_error_line_and_no_output(weights, short_audio, tmp_path, kind):
    corrupt = tmp_path / ("corrupt.jpg" if kind == "image" else "corrupt.wav")
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    inputs = {"image": PORTRAIT, "audio": short_audio, kind: corrupt}
    out = tmp_path / "out" / "o.mp4"
    done = run_cli(
        "--weights",
        weights,
        "--image",
        inputs["image"],
        "--audio",
        inputs["audio"],
        "--out",
        out,
        "--size",
        64,
        "--steps",
        1,
        "--quiet",
    )
    assert done.returncode == 2
    # One line, also after the face detector ran (its native logging is silenced).
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"emo: error: cannot read {kind} {corrupt}"), done.stderr
    assert not (tmp_path / "out").exists()


def test_output_folder_is_created_or_a_clear_error(weights, short_audio, tmp_path, emo_generate):
    common = [
        "--weights",
        weights,
        "--image",
        PORTRAIT,
        "--audio",
        short_audio,
        "--steps",
        1,
        "--size",
        64,
        "--fps",
        10,
        "--quiet",
    ]
    done = emo_generate(*common, "--out", tmp_path / "new" / "dir" / "o.mp4")
    assert done.returncode == 0 and (tmp_path / "new" / "dir" / "o.mp4").is_file()
    (tmp_path / "a-file").write_text("not a folder")
    done = emo_generate(*common, "--out", tmp_path / "a-file" / "o.mp4")
    assert done.returncode == 2 and "Traceback" not in done.stderr and "output folder" in done.stderr
    assert (tmp_path / "a-file").read_text() == "not a folder"


@pytest.mark.parametrize("option", ["channels_last", "compile"])
def test_speed_options_keep_the_output(weights, option):
    """GPU speed options, checked on CPU: same prediction (compile traced by dynamo, run with aot_eager)."""
    from emo.models import Conditioning

    def predict(pipe):
        torch.manual_seed(0)
        cfg = pipe.model.audio_projector.config
        noisy = torch.randn(1, 3, 4, 8, 8)
        cond = Conditioning(
            audio=torch.randn(1, 3, cfg.window, cfg.num_layers, cfg.feature_dim),
            speed=torch.rand(1, 3, 5),
            face_mask=torch.ones(1, 1, 64, 64),
        )
        with torch.no_grad():
            ref = pipe.model.reference_features(torch.randn(1, 4, 8, 8), torch.randn(1, 4, 4, 8, 8))
            return pipe.model(noisy, torch.tensor([500]), cond, ref)

    plain = predict(EMOPipeline.from_weights(weights))
    fast = EMOPipeline.from_weights(weights)
    fast.optimize(
        channels_last=option == "channels_last", compile=option == "compile", compile_backend="aot_eager"
    )
    assert torch.allclose(predict(fast), plain, atol=1e-5)
