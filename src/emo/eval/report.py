"""Write an evaluation as JSON and as a markdown table (EMO Table 1 style), both atomically.

``emo evaluate report A.json B.json [--names A B]`` prints the metrics of several evaluations side by
side with :func:`compare_markdown` (``scripts/compare_checkpoints.sh`` uses it to compare two checkpoints).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from emo.errors import EmoError
from emo.eval.evaluate import Evaluation, MetricResult, mark_non_finite
from emo.media import atomic_write_bytes

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
    mark_non_finite(evaluation)
    text = json.dumps(to_json(evaluation, inputs), indent=2, allow_nan=False, default=str)
    atomic_write_bytes(json_path, (text + "\n").encode())
    atomic_write_bytes(markdown_path, to_markdown(evaluation).encode())


def compare_markdown(results: list[dict], names: list[str]) -> str:
    """One markdown table with a column per evaluation (the JSON that `emo evaluate` writes)."""
    order: dict[str, dict] = {}  # metric name -> its first description, in report order
    for result in results:
        for name, metric in result["metrics"].items():
            order.setdefault(name, metric)
    header = ["metric", "better", *(n.replace("|", "/") for n in names)]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for name, first in order.items():
        cells = []
        for result in results:
            m = result["metrics"].get(name)
            cells.append("—" if m is None else _format(m["value"], m["status"]))
        better = ARROWS.get(first["better"], first["better"])
        lines.append(f"| {first['label']} | {better} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def read_evaluation(path: str | Path) -> dict:
    """The JSON that `emo evaluate` wrote at `path`."""
    path = Path(path)
    try:
        result = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise EmoError(f"{path}: not a readable evaluation JSON ({exc})") from None
    if not isinstance(result, dict) or not isinstance(result.get("metrics"), dict):
        raise EmoError(f"{path}: no 'metrics'; expected the JSON that `emo evaluate` writes")
    return result
