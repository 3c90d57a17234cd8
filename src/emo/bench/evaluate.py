"""Benchmark `emo evaluate`: evaluation throughput on this machine, per metric and overall.

  emo bench evaluate [VIDEO] [--frames 48] [--frame-stride 1] [--no-learned]

Builds a generated/ground-truth pair from VIDEO (default: emo/assets/hdtf_speech_256_4s.mp4, the 256²
4 s test clip; the generated side is the same clip with pixel noise, re-encoded with its audio), saves
full-size randomly initialised networks in their public weight formats (speed does not depend on the
weight values), and runs the whole evaluation. Prints, for each stage, seconds and *generated frames per second* — each
stage also processes the ground-truth frames, so this is the rate at which a generated video gets
scored. Measures, never asserts; other jobs on the machine change the numbers.
"""

from __future__ import annotations

from emo.bench import ASSETS

HELP = "evaluation throughput: generated frames scored per second, per metric"

DEFAULT_VIDEO = ASSETS / "hdtf_speech_256_4s.mp4"  # real face + speech: the face and sync metrics need both


def add_arguments(parser) -> None:
    parser.add_argument(
        "video",
        nargs="?",
        default=str(DEFAULT_VIDEO),
        help="a talking-head video with audio (default: a shipped 256² 4 s clip)",
    )
    parser.add_argument("--frames", type=int, default=48, help="frames of the clip to evaluate (default 48)")
    parser.add_argument("--frame-stride", type=int, default=1, help="as in emo evaluate (default 1)")
    parser.add_argument("--no-learned", action="store_true", help="only the metrics that need no weights")


def _fake_i3d_path(path):
    """A TorchScript module with StyleGAN-V's I3D call signature and I3D-like cost (3-D convolutions)."""
    import torch
    import torch.nn.functional as F

    class I3DCost(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = torch.nn.Conv3d(3, 64, (7, 7, 7), stride=2, padding=3)
            self.c2 = torch.nn.Conv3d(64, 192, (3, 3, 3), padding=1)
            self.c3 = torch.nn.Conv3d(192, 480, (3, 3, 3), stride=2, padding=1)
            self.fc = torch.nn.Linear(480, 400)

        def forward(
            self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False
        ):
            x = x.float() / 127.5 - 1
            b, c, t, h, w = x.shape
            x = F.interpolate(x, size=(t, 224, 224), mode="trilinear", align_corners=False)
            x = F.max_pool3d(torch.relu(self.c1(x)), (1, 3, 3), (1, 2, 2), (0, 1, 1))
            x = F.max_pool3d(torch.relu(self.c2(x)), (1, 3, 3), (1, 2, 2), (0, 1, 1))
            x = torch.relu(self.c3(x))
            return self.fc(x.mean(dim=(2, 3, 4)))

    torch.jit.script(I3DCost()).save(str(path))
    return path


def run(args) -> int:
    import tempfile
    import time
    from pathlib import Path

    import numpy as np
    import torch

    from emo.errors import EmoError
    from emo.eval import arcface, expression, i3d, inception, lpips, syncnet
    from emo.eval.evaluate import EvalConfig, evaluate, find_pairs
    from emo.media import iter_video_frames, load_audio, probe_video, write_video
    from emo.resources import peak_rss_mib
    from emo.tiny import save_random_weights

    video = Path(args.video)
    if not video.is_file():
        raise EmoError(f"{video}: no such video; pass a talking-head VIDEO with audio")
    fps = probe_video(video).fps
    with tempfile.TemporaryDirectory(prefix="emo-bench-evaluate-") as tmp:
        tmp = Path(tmp)
        (tmp / "gen").mkdir()
        (tmp / "ref").mkdir()
        frames = [f for _, f in zip(range(args.frames), iter_video_frames(video), strict=False)]
        audio = load_audio(video)[: int(16000 * len(frames) / fps)]
        rng = np.random.default_rng(0)
        noisy = [
            np.clip(f.astype(np.int16) + rng.integers(-10, 11, f.shape), 0, 255).astype(np.uint8)
            for f in frames
        ]
        write_video(tmp / "ref" / "clip.mp4", frames, fps, audio=audio)
        write_video(tmp / "gen" / "clip.mp4", noisy, fps, audio=audio)
        config = EvalConfig(frame_stride=args.frame_stride)
        if not args.no_learned:
            w = tmp / "weights"
            w.mkdir()
            scale = 0.02  # small random weights keep activations finite through the deep networks
            config.inception = save_random_weights(
                inception.FIDInceptionV3(), w / inception.WEIGHTS_NAME, scale=scale
            )
            config.syncnet = save_random_weights(syncnet.SyncNet(), w / syncnet.WEIGHTS_NAME, scale=scale)
            config.arcface = save_random_weights(
                arcface.IResNet(arcface.DEPTHS["iresnet100"]), w / arcface.WEIGHTS_NAME, scale=scale
            )
            config.deep3d = save_random_weights(
                expression.Deep3DRecon(), w / expression.WEIGHTS_NAME, "net_recon", scale=scale
            )
            config.i3d = _fake_i3d_path(w / i3d.WEIGHTS_NAME)
            lp = lpips.LPIPS("alex")
            torch.save({k: v for k, v in lp.state_dict().items() if k.startswith("lin")}, w / "alex.pth")
            torch.save(
                {k: v for k, v in lp.state_dict().items() if k.startswith("features.")}, w / "alexnet.pth"
            )
            config.lpips, config.lpips_backbone = w / "alex.pth", w / "alexnet.pth"
        started = time.perf_counter()
        result = evaluate(find_pairs(tmp / "gen", tmp / "ref"), config, progress=False)
        wall = time.perf_counter() - started
    n = result.frames
    print(f"{n} generated frames ({frames[0].shape[1]}x{frames[0].shape[0]}, {fps:g} fps) + as many ground-truth "
          f"frames; frame stride {args.frame_stride}")  # fmt: skip
    print(f"{'stage':<12} {'seconds':>8} {'gen frames/s':>13}")
    for stage, seconds in sorted(result.timings.items(), key=lambda kv: -kv[1]):
        print(f"{stage:<12} {seconds:8.2f} {n / seconds if seconds else float('inf'):13.2f}")
    print(f"{'total':<12} {wall:8.2f} {n / wall:13.2f}   (includes loading the networks)")
    print(f"peak RSS {peak_rss_mib():.0f} MiB")
    if not args.no_learned:
        print(
            "fvd timing uses a stand-in TorchScript network with I3D-like 3-D convolutions, not the real I3D"
        )
    return 0
