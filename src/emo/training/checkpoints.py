"""A run directory and its checkpoints: the layout, atomic saving, and resuming exactly where a run stopped.

A run directory holds `base/` (the full network the run started from, written once), `config.json`,
`audio_front_end.json` (the record of the front-end that made its dataset's audio features, which `export`
passes on) and `checkpoints/step_XXXXXXXX/`. A checkpoint holds only what changes: the trained parameters (safetensors),
their EMA, optimizer / LR schedule / grad-scaler state, every rank's RNG state and the data position. It is
written into a temporary directory that is renamed into place, so a checkpoint directory is always complete;
the last `run.keep_checkpoints` are kept.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.utils import DistributedType
from safetensors.torch import load_file, save_file

from emo.errors import EmoError
from emo.media import replace_folder, writing

log = logging.getLogger(__name__)

STATE = "state.json"  # written last into a checkpoint: a checkpoint without it is incomplete
TRAINABLE = "trainable.safetensors"
EMA = "ema.safetensors"
BASE = "base"
RUN_CONFIG = "config.json"  # the run's stage config, written when it starts
CHECKPOINTS = "checkpoints"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step_*") if (p / STATE).is_file())


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or a run directory (-> its latest checkpoint)."""
    path = Path(path)
    if (path / STATE).is_file():
        return path
    if not path.is_dir():
        raise EmoError(f"{path}: no such run or checkpoint directory")
    found = list_checkpoints(path)
    if not found:
        raise EmoError(
            f"{path} holds no complete checkpoint (expected {CHECKPOINTS}/step_*/{STATE} from `emo train`)"
        )
    return found[-1]


def run_of(checkpoint: Path) -> Path:
    """The run directory a checkpoint belongs to (RUN/checkpoints/step_N -> RUN)."""
    return checkpoint.parent.parent


def load_trained_parameters(model, state: dict, source) -> None:
    """Copy a checkpoint's trained parameters into `model` (every key must exist with its shape)."""
    params = dict(model.named_parameters())
    bad = [k for k in state if k not in params or params[k].shape != state[k].shape]
    if bad:
        raise EmoError(
            f"{source} does not fit this network: e.g. {bad[0]} (was it written by another model preset?)"
        )
    with torch.no_grad():
        for key, value in state.items():
            params[key].copy_(value)


@dataclass
class Position:
    """Where training is: optimizer steps done and the next micro-batch of the data order."""

    step: int = 0
    epoch: int = 0
    batch: int = 0  # next micro-batch within the epoch


class Checkpointer:
    """Saves and restores one run's checkpoints on every rank of an `accelerate` run."""

    def __init__(self, run_dir: Path, accelerator, keep: int):
        self.run_dir = Path(run_dir)
        self.accelerator = accelerator
        self.keep = keep
        self.rank = accelerator.process_index
        self.world = accelerator.num_processes

    @property
    def deepspeed(self) -> bool:
        return self.accelerator.distributed_type == DistributedType.DEEPSPEED

    def resolve_resume(self, resume) -> Path | None:
        """None (a fresh run: refused where checkpoints exist), "auto" (the latest, if any) or a checkpoint."""
        existing = list_checkpoints(self.run_dir)
        if resume is None:
            if existing:
                raise EmoError(
                    f"{self.run_dir} already has checkpoints; pass --resume auto to continue it, or "
                    "choose another run.output_dir"
                )
            return None
        if str(resume) == "auto":
            return existing[-1] if existing else None
        checkpoint = resolve_checkpoint(resume)
        if run_of(checkpoint).resolve() != self.run_dir.resolve():
            raise EmoError(
                f"--resume {resume} belongs to run {run_of(checkpoint)}, not run.output_dir "
                f"{self.run_dir}; set run.output_dir={run_of(checkpoint)}"
            )
        return checkpoint

    @contextlib.contextmanager
    def _removed_on_error(self, temp: Path):
        """A checkpoint interrupted (an error, a full disk, a signal) leaves no temporary directory."""
        try:
            yield
        except BaseException:
            if self.accelerator.is_main_process:
                shutil.rmtree(temp, ignore_errors=True)
            raise

    def save(
        self,
        position: Position,
        trainable: dict,
        ema,
        optimizer,
        scheduler,
        stage: int,
        components: list[str],
    ) -> Path:
        """Write the checkpoint of ``position`` atomically; a full disk is one line naming it (no partial one)."""
        final = self.run_dir / CHECKPOINTS / f"step_{position.step:08d}"
        # From the step alone (no pid): the same directory on every rank.
        temp = final.with_name(f".tmp-{final.name}")
        with self._removed_on_error(temp), writing(final):
            acc = self.accelerator
            if acc.is_main_process:
                shutil.rmtree(temp, ignore_errors=True)
                temp.mkdir(parents=True)
            acc.wait_for_everyone()
            rng = {"torch": torch.get_rng_state()}
            if torch.cuda.is_available():
                rng["cuda"] = torch.cuda.get_rng_state()
            save_file(rng, str(temp / f"rng_{self.rank}.safetensors"))
            if self.deepspeed:
                acc.save_state(str(temp / "deepspeed"))  # DeepSpeed shards the optimizer: its own format
            acc.wait_for_everyone()  # every rank's files are in temp/ before the main process renames it
            if acc.is_main_process:
                save_file(
                    {k: p.detach().cpu().contiguous() for k, p in trainable.items()},
                    str(temp / TRAINABLE),
                )
                if ema is not None:
                    save_file({k: v.cpu().contiguous() for k, v in ema.shadow.items()}, str(temp / EMA))
                if not self.deepspeed:
                    torch.save(optimizer.state_dict(), temp / "optimizer.pt")
                scaler = acc.scaler.state_dict() if acc.scaler is not None else None
                state = {
                    "step": position.step,
                    "epoch": position.epoch,
                    "batch": position.batch,
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler,
                    "world_size": self.world,
                    "components": components,
                    "stage": stage,
                }
                # Written last: it marks the checkpoint complete.
                (temp / STATE).write_text(json.dumps(state, indent=2))
                replace_folder(temp, final)  # rerunning a step after a resume replaces the old copy
                for old in list_checkpoints(self.run_dir)[: -self.keep]:
                    shutil.rmtree(old, ignore_errors=True)
                log.info("checkpoint %s", final)
            acc.wait_for_everyone()
            return final

    def load(
        self,
        checkpoint: Path,
        model,
        trainable: dict,
        ema,
        optimizer,
        scheduler,
        components: list[str],
        device,
    ) -> Position:
        state = json.loads((checkpoint / STATE).read_text())
        if sorted(state["components"]) != sorted(components):
            raise EmoError(
                f"{checkpoint} trained {', '.join(state['components'])}, the config trains "
                f"{', '.join(components)}: resume with the run's own config"
            )
        # Every rank of the saving run wrote its RNG state; one missing means the checkpoint is damaged. All
        # ranks check all files (same files, same verdict), so none is left waiting for the others.
        missing = [
            f"rng_{r}.safetensors"
            for r in range(state["world_size"])
            if not (checkpoint / f"rng_{r}.safetensors").is_file()
        ]
        if missing:
            raise EmoError(
                f"{checkpoint} is incomplete: {', '.join(missing)} missing (it was written by "
                f"{state['world_size']} processes); resume from an earlier checkpoint"
            )
        if state["world_size"] != self.world:
            log.warning(
                "%s was written by %d processes, resuming on %d: the data order changes from here%s",
                checkpoint,
                state["world_size"],
                self.world,
                f" and ranks >= {state['world_size']} start from a fresh RNG state"
                if self.world > state["world_size"]
                else "",
            )
        load_trained_parameters(model, load_file(str(checkpoint / TRAINABLE)), checkpoint)
        if self.deepspeed:
            self.accelerator.load_state(str(checkpoint / "deepspeed"))
        else:
            optimizer.load_state_dict(
                torch.load(checkpoint / "optimizer.pt", map_location="cpu", weights_only=True)
            )
        scheduler.load_state_dict(state["scheduler"])
        if state["scaler"] is not None and self.accelerator.scaler is not None:
            self.accelerator.scaler.load_state_dict(state["scaler"])
        if ema is not None:
            ema_file = checkpoint / EMA
            source = load_file(str(ema_file)) if ema_file.is_file() else trainable
            ema.shadow = {k: v.detach().float().clone().to(device) for k, v in source.items()}
        if self.rank < state["world_size"]:
            rng = load_file(str(checkpoint / f"rng_{self.rank}.safetensors"))
            torch.set_rng_state(rng["torch"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state(rng["cuda"])
        log.info("resumed from %s (step %d)", checkpoint, state["step"])
        return Position(state["step"], state["epoch"], state["batch"])
