"""Training state <-> files: the checkpoint format (loaded with ``weights_only=True``), the run state,
and ``run.json`` (the run a trainer opened, adopted after a kill before the first checkpoint).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn


CKPT_FORMAT = "e4e-lab-train"


def _trainable_state(inverter: nn.Module) -> dict:
    """Inverter state without the frozen generator (it is re-loaded from ``model.generator``)."""
    return {k: v for k, v in inverter.state_dict().items() if not k.startswith("decoder.")}


def _atomic_save(obj, path: Path) -> None:
    from e4e.fileio import atomic_torch_save

    atomic_torch_save(obj, path)


RUN_FILE = "run.json"


def _write_run_file(out_dir: Path, run_id: str, chash: str) -> None:
    """Record the run this trainer opened, before any step: a restart that finds no ``last.pt``
    (killed before the first checkpoint) adopts it instead of leaving an orphan RUNNING run."""
    import json

    from e4e.fileio import atomic_write

    atomic_write(out_dir / RUN_FILE, lambda f: f.write(json.dumps({"run_id": run_id, "config_hash": chash})), "w")


def _orphan_run(client, out_dir: Path, chash: str) -> str | None:
    """The unfinished run recorded in ``out_dir/run.json`` for this config, if the store has it."""
    import json

    try:
        rec = json.loads((out_dir / RUN_FILE).read_text())
        run_id = rec["run_id"]
        if rec.get("config_hash") != chash:
            return None
        run = client.get_run(run_id)
    except Exception:  # noqa: BLE001 - no file, a bad file, another store: open a new run
        return None
    if run.info.status == "FINISHED" or run.info.lifecycle_stage == "deleted":
        return None
    return run_id


# what ``Trainer.resume`` reads from every training checkpoint
TRAIN_KEYS = ("config_hash", "inverter", "optimizer", "data_order", "step", "best_val", "best_step", "run_id", "rng")


def load_training_checkpoint(path: str | Path) -> dict:
    """A training checkpoint of this trainer, loaded with ``weights_only=True``; a file that is not
    one (another kind of checkpoint, truncated, pickling Python objects, a folder, keys missing) is a
    ``CheckpointError`` naming it."""
    from e4e.checkpoints import CheckpointError, _wrong_kind, checkpoint_kind, load_checkpoint, require_keys

    if Path(path).exists() and not Path(path).is_file():
        raise CheckpointError(f"{path} is not a file: move it out of the run directory (the trainer writes its "
                              "resume checkpoint there)")
    ck = load_checkpoint(path)
    if not isinstance(ck, dict) or ck.get("format") != CKPT_FORMAT:
        raise _wrong_kind(path, checkpoint_kind(ck), f"e4e-lab training ({CKPT_FORMAT!r})", ck)
    require_keys(ck, TRAIN_KEYS, path, "training")
    return ck


@dataclass
class _State:
    step: int = 0
    best_val: float = math.inf
    best_step: int = -1
    run_id: str | None = None
    own_run: bool = False
    last_logs: dict = field(default_factory=dict)
