"""Write an evaluation as JSON and as a markdown table (EMO Table 1 style), both atomically."""

from __future__ import annotations

import json
import math
from pathlib import Path

from emo.eval.evaluate import Evaluation, MetricResult, mark_non_finite

# "closer": closer to the ground truth's value is better (F-SIM, EMO.md §6), which sits in `closer_to`.
ARROWS = {"lower": "↓", "higher": "↑", "closer": "closer to GT", "": ""}


def to_json(evaluation: Evaluation, inputs: dict) -> dict:
    return {
        "metrics": {m.name: m.to_json() for m in evaluation.metrics},
        "per_video": evaluation.per_video,
        "frames": evaluation.frames,
        "seconds": round(evaluation.seconds, 3),
        "frames_per_second": round(evaluation.frames / evaluation.seconds, 3) if evaluation.seconds else None,
        "stage_seconds": {k: round(v, 3) for k, v in evaluation.timings.items()},
        "inputs": inputs,
    }


def _format(value: float | None, status: str = "ok") -> str:
    if status != "ok" or value is None or not math.isfinite(value):
        return "unavailable"
    return f"{value:.4g}" if abs(value) < 1000 else f"{value:.1f}"


def _value(m: MetricResult) -> str:
    return _format(m.value, m.status)


def to_markdown(evaluation: Evaluation, title: str = "Evaluation") -> str:
    lines = [f"## {title}", "", "| metric | value | better | notes |", "| --- | --- | --- | --- |"]
    for m in evaluation.metrics:
        note = f"enable with `{m.enable}`; {m.note}" if m.enable else m.note
        lines.append(f"| {m.label} | {_value(m)} | {ARROWS[m.better]} | {note.replace('|', '/')} |")
    lines += ["", f"{len(evaluation.per_video)} videos, {evaluation.frames} generated frames, "
              f"{evaluation.seconds:.1f} s."]  # fmt: skip
    return "\n".join(lines) + "\n"


def write_report(
    evaluation: Evaluation, json_path: str | Path, markdown_path: str | Path, inputs: dict
) -> None:
    """Write both files; non-finite values are reported unavailable (JSON has no NaN)."""
    from emo.media import atomic_write_bytes

    mark_non_finite(evaluation)
    text = json.dumps(to_json(evaluation, inputs), indent=2, allow_nan=False, default=str)
    atomic_write_bytes(json_path, (text + "\n").encode())
    atomic_write_bytes(markdown_path, to_markdown(evaluation).encode())
