"""How well can the mouth guide's audio reader follow the mouth? Variants, cross-validated over training videos.

    python scripts/audio_reader_cv.py DATA_DIR [--out cv.json]

DATA_DIR: WORK_DIR/data/small of scripts/train_small.sh (train/, val_known/, val_unseen/). Each variant maps a
frame's window of log-mel features to its mouth opening (Face Mesh's inner-lip gap over the eye distance, as
`emo.training.mouth_reading.clip_openings`). It is scored by per-clip Pearson r, averaged, in 5 folds that hold
out whole training videos (so a person's other clips never score the fit), then, fitted on all of train/, on the
held-out clips beside the control of the next clip's audio. Variants: the shipped reader (ridge, ±2 frames, all
80 mel bins, penalty 1e4), its predictions averaged over 3 frames, wider windows, 20 bands instead of 80 bins,
per-clip mean removal (cepstral mean normalisation), and a small temporal CNN (two 1-D convolutions).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from emo.conditioning.windows import window
from emo.training.mouth_reading import clip_audio, clip_openings, clips_of, own_and_swapped_r, ridge_fit


def load(dataset: Path) -> list[tuple[str, torch.Tensor, np.ndarray]]:
    """(video, (F, L, D) features, (F,) openings, NaN where no face) per clip."""
    return [(c.parent.name, clip_audio(c).double(), clip_openings(c)) for c in clips_of(dataset)]


def bands(features: torch.Tensor) -> torch.Tensor:
    """(F, L, 80) mel bins -> (F, L, 20) bands of 4."""
    return features.reshape(*features.shape[:2], 20, 4).mean(-1)


def moving_average(x: np.ndarray, k: int) -> np.ndarray:
    return x if k <= 1 else np.convolve(np.pad(x, k // 2, mode="edge"), np.ones(k) / k, mode="valid")


class Ridge:
    def __init__(self, half_window=2, pooled=False, centred=False, penalty=1e4, smoothing=1):
        self.half_window, self.pooled, self.centred = half_window, pooled, centred
        self.penalty, self.smoothing = penalty, smoothing

    def features(self, f: torch.Tensor) -> np.ndarray:
        f = bands(f) if self.pooled else f
        f = f - f.mean((0, 1), keepdim=True) if self.centred else f
        return window(f, self.half_window).flatten(1).numpy()

    def fit(self, clips):
        keep = [np.isfinite(o) for _, _, o in clips]
        x = np.concatenate([self.features(f)[k] for (_, f, _), k in zip(clips, keep, strict=True)])
        y = np.concatenate([o[k] for (_, _, o), k in zip(clips, keep, strict=True)])
        self.mean, self.std, self.w = ridge_fit(x, y - y.mean(), self.penalty)
        return self

    def predict(self, f: torch.Tensor) -> np.ndarray:
        return moving_average(((self.features(f) - self.mean) / self.std) @ self.w, self.smoothing)


class TemporalCNN:
    """Two 1-D convolutions (kernel 5, 32 channels) over the frames' 20-band features."""

    def __init__(self, epochs=80, seed=0):
        self.epochs, self.seed = epochs, seed

    def inputs(self, f: torch.Tensor) -> torch.Tensor:
        return ((bands(f).flatten(1).float() - self.mu) / self.sd).T[None]

    def fit(self, clips):
        torch.manual_seed(self.seed)
        stacked = torch.cat([bands(f).flatten(1).float() for _, f, _ in clips])
        self.mu, self.sd = stacked.mean(0), stacked.std(0) + 1e-6
        y_all = np.concatenate([o[np.isfinite(o)] for _, _, o in clips])
        scale = (y_all.mean(), y_all.std())
        self.net = nn.Sequential(
            nn.Dropout(0.1), nn.Conv1d(stacked.shape[1], 32, 5, padding=2), nn.GELU(), nn.Dropout(0.3),
            nn.Conv1d(32, 32, 5, padding=2), nn.GELU(), nn.Dropout(0.3), nn.Conv1d(32, 1, 1),
        )  # fmt: skip
        opt = torch.optim.AdamW(self.net.parameters(), 1e-3, weight_decay=1e-2)
        data = [(self.inputs(f), torch.from_numpy((o - scale[0]) / scale[1]).float()) for _, f, o in clips]
        for _ in range(self.epochs):
            for i in torch.randperm(len(data)).tolist():
                x, y = data[i]
                keep = torch.isfinite(y)
                loss = ((self.net(x)[0, 0][keep] - y[keep]) ** 2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
        self.net.eval()
        return self

    @torch.no_grad()
    def predict(self, f: torch.Tensor) -> np.ndarray:
        return self.net(self.inputs(f))[0, 0].double().numpy()


VARIANTS = {
    "shipped: ridge, ±2 frames, 80 bins": lambda: Ridge(),
    "shipped, predictions averaged over 3 frames": lambda: Ridge(smoothing=3),
    "ridge, ±4 frames": lambda: Ridge(half_window=4),
    "ridge, 20 bands, penalty 3e4": lambda: Ridge(pooled=True, penalty=3e4),
    "ridge, 20 bands, ±4 frames, penalty 3e4": lambda: Ridge(half_window=4, pooled=True, penalty=3e4),
    "ridge, per-clip mean removed, penalty 1e5": lambda: Ridge(centred=True, penalty=1e5),
    "temporal CNN": lambda: TemporalCNN(),
}


def scores(model, clips) -> tuple[list[float], list[float]]:
    """Per-clip r with the clip's own audio, and with the next clip's (tiled or cut to length)."""
    return own_and_swapped_r([model.predict(f) for _, f, _ in clips], [o for _, _, o in clips])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--out", type=Path, help="also write the report here (JSON)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    train = load(args.data / "train")
    held_out = {g: load(args.data / g) for g in ("val_known", "val_unseen")}
    videos = sorted({v for v, _, _ in train})
    np.random.default_rng(0).shuffle(videos)
    folds = [set(videos[i::5]) for i in range(5)]
    report = {}
    for name, make in VARIANTS.items():
        cv = []
        for fold in folds:
            model = make().fit([c for c in train if c[0] not in fold])
            cv += scores(model, [c for c in train if c[0] in fold])[0]
        row = {"cv r (training videos held out)": round(float(np.mean(cv)), 3)}
        model = make().fit(train)
        for group, clips in held_out.items():
            own, other = scores(model, clips)
            row[group] = {"r per clip": [round(r, 3) for r in own], "r": round(float(np.mean(own)), 3),
                          "control: next clip's audio": round(float(np.mean(other)), 3)}  # fmt: skip
        report[name] = row
        print(name, json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
