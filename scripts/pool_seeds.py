"""Pool several `evaluate_small.py` runs of one model that differ only in the noise (`--seed`).

    python scripts/pool_seeds.py OUT_SEED0 OUT_SEED1 ... [--json pooled.json]   (OUT folders or results.json files)

One 3-clip evaluation's audio-swap gain moves by about ±0.07 with the noise alone (docs/small_model.md), so a
model's lip sync is judged on the gains of all its clip-draws together: their mean, its standard error (the
draws taken as independent) and how many are positive. A model that ignores the audio scores exactly 0 on each.
Printed per group (known people, people never seen) and over both; PSNR and SSIM are averaged beside them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

# What must match between the runs: the same model under the same settings, only the noise differs. A run made
# before evaluate_small.py recorded a setting has None there; that setting is not compared.
SAME = (
    "seconds",
    "sampler",
    "steps",
    "strength",
    "audio_guidance",
    "audio_guidance_region",
    "mouth_guidance",
)


def same_model(a: str, b: str) -> bool:
    """Two weights folders hold the same model: the same path, or the same files apart from notes (*.md)."""
    if Path(a).resolve() == Path(b).resolve():
        return True

    def files(root: Path) -> dict:
        return {
            p.relative_to(root): p.read_bytes()
            for p in sorted(root.rglob("*"))
            if p.is_file() and p.suffix != ".md"
        }

    return Path(a).is_dir() and Path(b).is_dir() and files(Path(a)) == files(Path(b))


def read_runs(paths: list[Path]) -> list[dict]:
    runs = []
    for path in paths:
        path = path / "results.json" if path.is_dir() else path
        if not path.is_file():
            sys.exit(
                f"pool_seeds: {path} not found; give evaluate_small.py's OUT folders or their results.json"
            )
        runs.append(json.loads(path.read_text()))
    for key in SAME:
        values = {json.dumps(run.get(key)) for run in runs if run.get(key) is not None}
        if len(values) > 1:
            sys.exit(
                f"pool_seeds: the runs differ in {key} ({', '.join(sorted(values))}); pool one model's seeds"
            )
    for run in runs[1:]:
        if not same_model(runs[0]["weights"], run["weights"]):
            sys.exit(f"pool_seeds: {runs[0]['weights']} and {run['weights']} are different models")
    seeds = [seed_of(run) for run in runs]
    if len(set(seeds)) < len(seeds):
        sys.exit(f"pool_seeds: seeds repeat ({seeds}); each run must draw other noise")
    return runs


def seed_of(run: dict) -> int:
    return run.get("seed") or 0  # runs before --seed drew seed 0


def summary(gains: list[float]) -> dict:
    gains = np.asarray(gains, dtype=float)
    se = float(gains.std(ddof=1) / np.sqrt(len(gains))) if len(gains) > 1 else float("nan")
    return {"gain": float(gains.mean()), "se": se, "positive": int((gains > 0).sum()), "draws": len(gains)}


def pool(runs: list[dict]) -> dict:
    settings = {key: next((run[key] for run in runs if run.get(key) is not None), None) for key in SAME}
    pooled = {
        "weights": runs[0]["weights"],
        **settings,
        "seeds": [seed_of(run) for run in runs],
        "groups": {},
    }
    everything = []
    for group in runs[0]["groups"]:
        gains = [clip["gain"] for run in runs for clip in run["groups"][group]["audio_swap"]["per_video"]]
        everything += gains
        generated = [run["groups"][group]["generated"] for run in runs]
        pooled["groups"][group] = {
            **summary(gains),
            "per_seed": [run["groups"][group]["audio_swap"]["gain"] for run in runs],
            "psnr": float(np.mean([g["psnr"] for g in generated])),
            "ssim": float(np.mean([g["ssim"] for g in generated])),
        }
    pooled["all"] = summary(everything)
    return pooled


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "runs",
        nargs="+",
        type=Path,
        help="evaluate_small.py OUT folders (or their results.json), one per seed",
    )
    parser.add_argument("--json", type=Path, help="also write the pooled figures here")
    args = parser.parse_args()
    runs = read_runs(args.runs)
    pooled = pool(runs)
    print(f"{runs[0]['weights']}, seeds {pooled['seeds']}")
    for name, row in [*pooled["groups"].items(), ("all", pooled["all"])]:
        line = f"  {name:11s} gain {row['gain']:.3f} ± {row['se']:.3f} ({row['positive']}/{row['draws']} positive)"
        if "psnr" in row:
            per_seed = ", ".join(f"{g:.3f}" for g in row["per_seed"])
            line += f"; per seed {per_seed}; PSNR {row['psnr']:.2f}, SSIM {row['ssim']:.3f}"
        print(line)
    if args.json:
        args.json.write_text(json.dumps(pooled, indent=2))


if __name__ == "__main__":
    main()
