"""Our metric networks against the public weight-file layouts (tests/data/eval_layouts/*.json).

Each JSON lists the key names and shapes of a public weight file, written down from the public
definition it cites. A network that matches them loads the real file; the tests also save random
weights in the public on-disk format and load them through the loader users call.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from emo.errors import EmoError
from emo.eval import arcface, expression, i3d, inception, lpips, syncnet
from emo.tiny import random_state_dict

LAYOUTS = Path(__file__).parent / "data" / "eval_layouts"


def _lins(model):
    return torch.nn.ModuleDict({f"lin{i}": getattr(model, f"lin{i}") for i in range(5)})


def _features(model):
    holder = torch.nn.Module()
    holder.features = model.features
    return holder


def _keys(model) -> dict:
    return {k: list(v.shape) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


@pytest.mark.parametrize(
    "layout, build",
    [
        ("pt_inception-2015-12-05", inception.FIDInceptionV3),
        ("syncnet_v2", syncnet.SyncNet),
        ("arcface_iresnet100", lambda: arcface.IResNet(arcface.DEPTHS["iresnet100"])),
        ("arcface_iresnet50", lambda: arcface.IResNet(arcface.DEPTHS["iresnet50"])),
        ("deep3d_epoch_20_net_recon", expression.Deep3DRecon),
        ("lpips_v0.1_alex", lambda: _lins(lpips.LPIPS("alex"))),
        ("lpips_v0.1_vgg", lambda: _lins(lpips.LPIPS("vgg"))),
        ("torchvision_alexnet_features", lambda: _features(lpips.LPIPS("alex"))),
        ("torchvision_vgg16_features", lambda: _features(lpips.LPIPS("vgg"))),
    ],
)
def test_state_dict_matches_public_layout(layout, build):
    public = json.loads((LAYOUTS / f"{layout}.json").read_text())["keys"]
    with torch.device("meta"):  # names and shapes only: no memory, no initialisation (iResNet-100 is 65M)
        model = build()
    ours = _keys(model)
    assert sorted(ours) == sorted(public), (
        f"missing {sorted(set(public) - set(ours))[:3]}, extra {sorted(set(ours) - set(public))[:3]}"
    )
    wrong = {k: (ours[k], public[k]) for k in public if ours[k] != public[k]}
    assert not wrong


def test_inception_loads_public_file_and_gives_pool_features(tmp_path):
    model = inception.FIDInceptionV3()
    state = random_state_dict(model)
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}  # older files lack them
    path = tmp_path / inception.WEIGHTS_NAME
    torch.save(state, path)
    loaded = inception.load_inception(path)
    assert not loaded.training
    frames = [np.random.default_rng(i).integers(0, 256, (64, 80, 3), dtype=np.uint8) for i in range(3)]
    feats = inception.inception_features(loaded, frames)
    assert feats.shape == (3, 2048) and np.all(feats >= 0)  # after ReLU and average pooling
    assert torch.equal(loaded.Mixed_7c.branch_pool.conv.weight, state["Mixed_7c.branch_pool.conv.weight"])


def test_syncnet_loads_public_file_and_scores(tmp_path):
    model = syncnet.SyncNet()
    path = tmp_path / syncnet.WEIGHTS_NAME
    torch.save(random_state_dict(model), path)
    loaded = syncnet.load_syncnet(path)
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (12, 224, 224, 3), dtype=np.uint8)
    audio = rng.normal(0, 0.1, 16000 * 12 // 25).astype(np.float32)
    score = syncnet.evaluate_sync(loaded, crops, audio)
    assert score.distance >= 0 and score.confidence >= 0 and abs(score.offset) <= syncnet.VSHIFT


def test_arcface_loader_reads_depth_from_keys(tmp_path):
    small = arcface.IResNet((1, 2, 1, 1))
    path = tmp_path / arcface.WEIGHTS_NAME
    torch.save(random_state_dict(small), path)
    loaded = arcface.load_arcface(path)
    assert len(loaded.layer2) == 2
    faces = [np.random.default_rng(i).integers(0, 256, (112, 112, 3), dtype=np.uint8) for i in range(2)]
    emb = arcface.embed(loaded, faces)
    assert emb.shape == (2, 512) and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_deep3d_loads_checkpoint_with_net_recon(tmp_path):
    model = expression.Deep3DRecon()
    state = random_state_dict(model)
    path = tmp_path / expression.WEIGHTS_NAME
    torch.save({"net_recon": state, "epoch": 20}, path)  # epoch_20.pth keeps the regressor under net_recon
    loaded = expression.load_deep3d(path)
    faces = [np.full((224, 224, 3), 128, np.uint8)]
    coeffs = expression.expression_coefficients(loaded, faces)
    full = loaded(torch.full((1, 3, 224, 224), 128 / 255.0))
    assert coeffs.shape == (1, 64)
    assert np.allclose(coeffs, full[:, 80:144].numpy(), atol=1e-5)  # the expression block of the 257


def test_wrong_weight_file_is_a_one_line_error(tmp_path):
    path = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(EmoError, match="--syncnet .*wrong.pth.*missing"):
        syncnet.load_syncnet(path)
    with pytest.raises(EmoError, match="--inception .*no such file"):
        inception.load_inception(tmp_path / "absent.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(EmoError, match="--deep3d .*not a readable"):
        expression.load_deep3d(tmp_path / "junk.pth")


class _FakeI3D(torch.nn.Module):
    """Stands in for i3d_torchscript.pt: same call signature, 400 outputs."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3, 400)

    def forward(
        self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False
    ):
        x = x.float()
        if rescale:
            x = x / 127.5 - 1
        return self.proj(x.mean(dim=(2, 3, 4)))


def test_i3d_torchscript_loads_and_is_called_like_stylegan_v(tmp_path):
    path = tmp_path / i3d.WEIGHTS_NAME
    torch.jit.script(_FakeI3D()).save(str(path))
    detector = i3d.load_i3d(path)
    frames = [np.full((32, 32, 3), v, np.uint8) for v in range(40)]
    clips = i3d.video_clips(frames)
    assert len(clips) == 2 and clips[1][0, 0, 0, 0] == 16  # non-overlapping 16-frame clips, tail dropped
    assert i3d.i3d_features(detector, clips).shape == (2, 400)
    # A plain state dict is not the TorchScript detector: refused with the flag named.
    plain = tmp_path / "rgb_imagenet.pt"
    torch.save({"w": torch.zeros(1)}, plain)
    with pytest.raises(EmoError, match="--i3d"):
        i3d.load_i3d(plain)


def test_lpips_loads_heads_and_torchvision_backbone(tmp_path):
    model = lpips.LPIPS("alex")
    state = random_state_dict(model)
    heads = {k: v.abs() for k, v in state.items() if k.startswith("lin")}  # v0.1 heads are non-negative
    backbone = {k: v for k, v in state.items() if k.startswith("features.")}
    backbone["classifier.1.weight"] = torch.zeros(4096, 9216)  # torchvision files carry the classifier too
    torch.save(heads, tmp_path / "alex.pth")
    torch.save(backbone, tmp_path / "alexnet-owt-7be5be79.pth")
    loaded = lpips.load_lpips(tmp_path / "alex.pth", tmp_path / "alexnet-owt-7be5be79.pth")
    rng = np.random.default_rng(0)
    a = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(2)]
    b = [np.clip(x.astype(int) + 40, 0, 255).astype(np.uint8) for x in a]
    assert np.allclose(lpips.lpips_distances(loaded, a, a), 0.0)
    assert np.all(lpips.lpips_distances(loaded, a, b) > 0)
    with pytest.raises(EmoError, match="--lpips-backbone"):  # heads of one trunk, backbone of the other
        torch.save(_features(lpips.LPIPS("vgg")).state_dict(), tmp_path / "vgg16.pth")
        lpips.load_lpips(tmp_path / "alex.pth", tmp_path / "vgg16.pth")


def test_fsim_of_the_reference_itself_is_100_and_other_images_score_lower():
    import cv2

    from emo.media import iter_video_frames

    # PyTorch's default initialisation (BatchNorm as identity) keeps images apart; the small random
    # weights above drive every embedding to the same direction (the last BatchNorm's bias).
    torch.manual_seed(0)
    model = arcface.IResNet((1, 1, 1, 1)).eval()
    frame = next(iter(iter_video_frames(Path(__file__).parent / "data" / "hdtf_speech_256_4s.mp4")))
    face = cv2.resize(frame[40:200, 48:208], (112, 112))
    rng = np.random.default_rng(0)
    noisy = np.clip(face.astype(int) + rng.integers(-25, 26, face.shape), 0, 255).astype(np.uint8)
    noise = rng.integers(0, 256, face.shape, dtype=np.uint8)
    same = arcface.fsim(model, face, [face, face])
    assert same == pytest.approx(100.0, abs=1e-3)  # cosine of identical embeddings is 1
    assert same > arcface.fsim(model, face, [noisy]) > arcface.fsim(model, face, [noise])
    assert arcface.fsim(model, face, [noise]) < 75
    assert arcface.fsim(model, face, [face, noise]) == pytest.approx(
        (same + arcface.fsim(model, face, [noise])) / 2
    )
