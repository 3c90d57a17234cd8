"""Loss curves of a run's stages: training loss (smoothed) and held-out validation loss, one panel per stage.

    python scripts/training_curves.py OUT.png RUN_DIR [RUN_DIR ...]      # e.g. WORK_DIR/runs/small/stage{1,2,3}

Reads each run's metrics.jsonl (the trainer's log: `loss` every step, `validation_loss` every validate_every).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def read(run: Path) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    train, val = [], []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "validation_loss" in record:
            val.append((record["step"], record["validation_loss"]))
        elif "loss" in record:
            train.append((record["step"], record["loss"]))
    return train, val


def main(out: Path, runs: list[Path]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs), 3.2), squeeze=False)
    for ax, run in zip(axes[0], runs):
        train, val = read(run)
        if train:
            steps, losses = map(np.asarray, zip(*train))
            k = min(50, len(losses))
            smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
            ax.plot(steps, losses, color="0.85", lw=0.5)
            ax.plot(steps[k - 1 :], smooth, color="tab:blue", label=f"training loss ({k}-step mean)")
        if val:
            steps, losses = zip(*val)
            ax.plot(steps, losses, "o-", color="tab:red", label="held-out validation loss")
        ax.set_title(run.name, fontsize=9)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    axes[0, 0].set_ylabel("prediction MSE, v here (training: min-SNR and mouth weighted)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__.strip().splitlines()[2].strip())
    main(Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]])
