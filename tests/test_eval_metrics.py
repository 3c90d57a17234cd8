"""Metric arithmetic: Fréchet distance, PSNR/SSIM, MFCC, SyncNet scoring, head-motion statistics."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from emo.eval.frechet import Gaussian, feature_frechet_distance, fit_gaussian, frechet_distance
from emo.eval.motion import head_motion_stats
from emo.eval.reconstruction import MAX_PSNR, psnr, ssim
from emo.eval.syncnet import calc_pdist, mel_filterbank, mfcc, sync_score


# ---- Fréchet distance -------------------------------------------------------------------------------
def test_frechet_1d_gaussians_closed_form():
    # 1-D: d = (m1 - m2)^2 + s1 + s2 - 2 sqrt(s1 s2) = (m1 - m2)^2 + (sqrt(s1) - sqrt(s2))^2
    a = Gaussian(np.array([1.0]), np.array([[4.0]]), 10)
    b = Gaussian(np.array([-2.0]), np.array([[9.0]]), 10)
    assert frechet_distance(a, b) == pytest.approx(3.0**2 + (2.0 - 3.0) ** 2)


def test_frechet_diagonal_gaussians_closed_form():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, -1.0])
    v1, v2 = np.array([1.0, 2.0, 0.5]), np.array([4.0, 2.0, 3.0])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2))
    got = frechet_distance(Gaussian(mu1, np.diag(v1), 5), Gaussian(mu2, np.diag(v2), 5))
    assert got == pytest.approx(expected, rel=1e-9)


def test_frechet_full_covariance_matches_rotated_diagonal():
    # Rotating both Gaussians by the same orthogonal matrix leaves the distance unchanged.
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    v1, v2 = np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.0, 2.0, 1.0, 0.5])
    mu1, mu2 = rng.normal(size=4), rng.normal(size=4)
    diag = frechet_distance(Gaussian(mu1, np.diag(v1), 5), Gaussian(mu2, np.diag(v2), 5))
    rotated = frechet_distance(
        Gaussian(q @ mu1, q @ np.diag(v1) @ q.T, 5), Gaussian(q @ mu2, q @ np.diag(v2) @ q.T, 5)
    )
    assert rotated == pytest.approx(diag, rel=1e-7)


def test_frechet_set_against_itself_is_zero_and_sample_estimates_converge():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 8))
    assert feature_frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)
    # Fewer samples than dimensions: singular covariances still give 0 for a set against itself.
    small = rng.normal(size=(5, 16))
    assert feature_frechet_distance(small, small) == pytest.approx(0.0, abs=1e-4)
    # Large samples of N(0, I) and N(1, 4I) in 2-D approach 2·1² + 2·(2 - 1)² = 4.
    a = rng.normal(size=(20000, 2))
    b = 1.0 + 2.0 * rng.normal(size=(20000, 2))
    assert feature_frechet_distance(a, b) == pytest.approx(4.0, rel=0.05)


def test_frechet_of_non_finite_features_is_nan_not_an_exception():
    # scipy's sqrtm fails with an internal LinAlgError on NaN; the caller gets NaN ("no value") instead.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 3))
    for bad in (np.nan, np.inf):
        y = x.copy()
        y[0, 0] = bad
        assert math.isnan(feature_frechet_distance(x, y))
    huge = Gaussian(np.array([1e200]), np.array([[1.0]]), 2)  # the squared mean difference overflows
    assert math.isnan(frechet_distance(huge, Gaussian(np.array([-1e200]), np.array([[1.0]]), 2)))


def test_fit_gaussian_needs_two_samples():
    with pytest.raises(ValueError):
        fit_gaussian(np.zeros((1, 3)))


# ---- PSNR / SSIM -------------------------------------------------------------------------------------
def test_psnr_known_values():
    a = np.full((16, 16, 3), 100, np.uint8)
    b = a + np.uint8(5)  # constant offset 5 -> MSE 25
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 25))
    c = a.copy()
    c[0, 0, 0] = 110  # one pixel off by 10 -> MSE 100 / 768
    assert psnr(a, c) == pytest.approx(10 * math.log10(255**2 / (100 / 768)))
    assert psnr(a, a) == MAX_PSNR


def test_ssim_identical_constant_and_noise():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (32, 32, 3)).astype(np.uint8)
    assert ssim(x, x) == pytest.approx(1.0)
    # Two constant images: variances and covariance vanish, SSIM = (2ab + C1) / (a² + b² + C1).
    a, b = np.full((20, 20), 100.0), np.full((20, 20), 150.0)
    c1 = (0.01 * 255) ** 2
    assert ssim(a, b) == pytest.approx((2 * 100 * 150 + c1) / (100**2 + 150**2 + c1))
    # Noise lowers SSIM, more noise lowers it more.
    noisy1 = np.clip(x + rng.normal(0, 10, x.shape), 0, 255)
    noisy2 = np.clip(x + rng.normal(0, 40, x.shape), 0, 255)
    assert 1.0 > ssim(x, noisy1) > ssim(x, noisy2)


def test_ssim_inverted_structure_is_negative():
    # y = 255 - x has the same mean and variance as x (around 127.5) but covariance -var: SSIM < 0.
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (24, 24)).astype(np.float64)
    assert ssim(x, 255 - x) < 0


def test_ssim_downsample_factor_is_ssim_m_s():
    from emo.eval.reconstruction import downsample_factor

    # f = max(1, round(min(M, N) / 256)) with MATLAB's round: 1.5 -> 2 and 2.5 -> 3 (Python's gives 2).
    assert [downsample_factor(h, 1000) for h in (8, 255, 383, 384, 512, 639, 640, 1080)] == [
        1,
        1,
        1,
        2,
        2,
        2,
        3,
        4,
    ]
    assert downsample_factor(1000, 300) == 1


@pytest.mark.parametrize("f, shape", [(2, (6, 7)), (3, (7, 9)), (4, (9, 8))])
def test_ssim_downsampling_is_matlab_imfilter_symmetric_then_subsample(f, shape):
    from emo.eval.reconstruction import _downsample

    rng = np.random.default_rng(f)
    image = rng.uniform(0, 255, shape)
    c = (f + 1) // 2  # MATLAB's kernel centre (1-based) for imfilter

    def mirror(k, n):  # 'symmetric' padding: the edge pixel repeats (d c b a | a b c d | d c b a)
        return -k - 1 if k < 0 else (2 * n - k - 1 if k >= n else k)

    expected = np.array([[np.mean([image[mirror(i + di, shape[0]), mirror(j + dj, shape[1])]
                                   for di in range(1 - c, f - c + 1) for dj in range(1 - c, f - c + 1)])
                          for j in range(0, shape[1], f)] for i in range(0, shape[0], f)])  # fmt: skip
    assert np.allclose(_downsample(image, f), expected)


def test_ssim_of_large_frames_is_ssim_of_their_2x2_block_means():
    # 512² -> f = 2: MATLAB's 2×2 mean filter covers (i, i+1), so keeping every 2nd pixel gives block means.
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (512, 384, 3)).astype(np.float64)
    y = np.clip(x + rng.normal(0, 30, x.shape), 0, 255)

    def blocks(im):
        return im.reshape(256, 2, 192, 2, 3).mean(axis=(1, 3))

    assert ssim(x, y) == pytest.approx(ssim(blocks(x), blocks(y)), rel=1e-9)
    assert abs(ssim(x, y) - ssim(x, y, downsample=False)) > 1e-4  # the full-size value differs


# ---- MFCC ----------------------------------------------------------------------------------------
def test_mfcc_frame_rate_and_energy_coefficient():
    sr = 16000
    t = np.arange(sr) / sr  # 1 s
    signal = 8000 * np.sin(2 * np.pi * 440 * t)
    feat = mfcc(signal, sr)
    assert feat.shape == (1 + math.ceil((sr - 400) / 160), 13)  # 25 ms windows every 10 ms: ~100 Hz
    # c0 is the log power of the pre-emphasised frame (recomputed here independently).
    pre = np.append(signal[0], signal[1:] - 0.97 * signal[:-1])
    frame = pre[160 * 10 : 160 * 10 + 400]
    energy = np.sum(np.abs(np.fft.rfft(frame, 512)) ** 2) / 512
    assert feat[10, 0] == pytest.approx(math.log(energy), rel=1e-9)


def test_mel_filterbank_triangles():
    bank = mel_filterbank(26, 512, 16000)
    assert bank.shape == (26, 257)
    assert bank.max() == pytest.approx(1.0) and bank.min() >= 0
    peaks = bank.argmax(axis=1)
    assert np.all(np.diff(peaks) > 0)  # centres increase with the filter index


def test_mfcc_is_louder_for_louder_audio():
    rng = np.random.default_rng(0)
    noise = rng.normal(size=8000)
    quiet, loud = mfcc(100 * noise), mfcc(1000 * noise)
    # Scaling by 10 adds log(100) to the log energy and to the log filterbank energies (c0 only).
    assert np.allclose(loud[:, 0] - quiet[:, 0], math.log(100), atol=1e-6)
    assert np.allclose(loud[:, 1:], quiet[:, 1:], atol=1e-6)


# ---- SyncNet scoring -----------------------------------------------------------------------------
def test_sync_score_finds_offset_and_confidence():
    rng = np.random.default_rng(0)
    audio = torch.from_numpy(rng.normal(size=(60, 16))).float()
    shift = 3
    video = torch.roll(audio, shifts=-shift, dims=0)  # video feature i matches audio feature i + 3
    dists = calc_pdist(video, audio, vshift=15)
    assert dists.shape == (60, 31)
    score = sync_score(video, audio)
    assert score.offset == -shift  # syncnet_python's sign: vshift - argmin
    assert score.confidence > 1.0 and score.distance < float(dists.mean())
    # Unrelated streams: no offset stands out, so confidence is far lower.
    other = torch.from_numpy(rng.normal(size=(60, 16))).float()
    assert sync_score(other, audio).confidence < score.confidence / 3


# ---- head motion ----------------------------------------------------------------------------------
def test_head_motion_stats_known_values():
    speeds = [np.array([1.0, 1.0, 1.0, 1.0]), np.array([0.0, 2.0, 0.0, 2.0])]
    stats = head_motion_stats(speeds)
    assert stats["mean_velocity"] == pytest.approx(1.0)
    assert stats["within_clip_variance"] == pytest.approx((0.0 + 1.0) / 2)
    assert stats["clip_mean_variance"] == pytest.approx(0.0)
    stats = head_motion_stats([np.array([0.5, 0.5]), np.array([1.5, 1.5])])
    assert stats["clip_mean_variance"] == pytest.approx(0.25)
    assert stats["within_clip_variance"] == 0.0


def test_rotation_speed_of_a_steady_turn():
    from emo.conditioning.face import rotation_from_euler
    from emo.eval.motion import video_rotation_speed

    class Obs:  # the part of FaceObservation motion reads
        def __init__(self, yaw):
            self.pose = type("P", (), {"rotation": rotation_from_euler(yaw, 0, 0)})()

    # 1 degree per frame at 15 fps = 0.5 degree per frame at 30 fps.
    obs = [Obs(float(i)) for i in range(20)] + [None]
    speed = video_rotation_speed(obs, fps=15.0)
    assert np.allclose(speed[5:15], 0.5, atol=1e-6)  # away from the smoothing's ends
    assert video_rotation_speed([None, None], fps=25.0) is None


# ---- mouth-audio proxy ------------------------------------------------------------------------------
def test_mouth_audio_correlation_finds_the_lag_of_a_delayed_mouth():
    from emo.eval.mouth import audio_loudness, mouth_audio_correlation

    rng = np.random.default_rng(0)
    envelope = np.repeat(rng.uniform(0.01, 0.5, 20), 5)  # 100 frames of syllable-like loudness
    audio = np.concatenate(
        [e * rng.normal(size=640) for e in envelope]
    )  # 25 fps at 16 kHz: 640 samples/frame
    loud = audio_loudness(audio, 16000, 25.0, 100)
    assert np.allclose(loud, envelope, rtol=0.2)
    mouth = np.roll(np.log(envelope), 2)  # the mouth follows the sound 2 frames later
    r, lag = mouth_audio_correlation(mouth, loud)
    assert lag == 2 and r > 0.9
    assert mouth_audio_correlation(mouth[::-1].copy(), loud)[0] < 0.5


def test_mouth_audio_proxy_prefers_the_videos_own_audio():
    from emo.conditioning.face import FaceAnalyzer
    from emo.eval.mouth import band_loudness, mouth_audio_correlation, mouth_opening
    from emo.media import iter_video_frames, load_audio

    path = Path(__file__).parent / "data" / "hdtf_speech_256_4s.mp4"
    with FaceAnalyzer() as analyzer:
        opening = mouth_opening(list(analyzer.analyze_video(iter_video_frames(path))))
    audio = load_audio(path)
    own, _ = mouth_audio_correlation(opening, band_loudness(audio, 16000, 25.0, len(opening)))
    other, _ = mouth_audio_correlation(opening, band_loudness(audio[::-1].copy(), 16000, 25.0, len(opening)))
    assert own > 0.2 and own > other + 0.2


def test_speech_band_loudness_hears_the_voice_band_only():
    from emo.eval.mouth import band_loudness

    t = np.arange(16000) / 16000  # 1 s at 16 kHz, 25 frames of 40 ms
    voice, hum, hiss = (np.sin(2 * np.pi * f * t) for f in (1000.0, 50.0, 7000.0))
    gate = np.repeat([0.0, 1.0] * 12 + [0.0], 640)  # the voice on in every other frame
    loud = band_loudness(gate * voice + hum + hiss, 16000, 25.0, 25)
    on, off = loud[1:-1:2], loud[2:-1:2]
    assert on.min() > 0.6 and off.max() < 0.1  # ~0.71 = a unit sine's RMS; hum and hiss barely pass
