"""One training seed of the ablation study, from its MLflow store into the repository.

``reports/data/ablation_study/seed<N>/<member>/`` holds, per finished member:
- ``per_image.csv``: the evaluation's per-image values (one row per test image, in the test split's order);
- ``metrics.json``: every ``test/*`` value of the run (scalars such as FID and w recovery included);
- ``meta.json``: member, method, the three switches, the loss weights, seed, steps, config hash, git
  sha, run id, number of test images, grid;
- ``training.csv``: the logged training and validation curves (``train/*``, ``val/*``), the mean of
  the points in each bin of ``TRAIN_BIN`` steps (row ``step`` = the bin's last step): loss terms,
  the latent discriminator's outputs and accuracy, validation losses;
- ``gradients.json`` (with ``gradients=True``, for members whose run directory is on this machine):
  each loss term's share of the encoder's gradient at the end of training
  (``experiments.ablation.gradients``).
Files are written atomically and an export of the same run is byte-identical, so exporting a seed
again (say after a re-evaluation) is safe; a member whose run is not finished is not exported.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from e4e.fileio import atomic_write

DATA_ROOT = Path("reports/data/ablation_study")
GRID = "ablation_study"
TRAIN_BIN = 100
LOSS_WEIGHTS = {"loss_l2": "loss.l2_lambda", "loss_lpips": "loss.lpips_lambda", "loss_id": "loss.id_lambda",
                "loss_delta_reg": "delta_reg.weight", "loss_adv": "adversarial.weight"}
SWITCHES = {"delta_reg": "delta_reg.enabled", "adversarial": "adversarial.enabled",
            "progressive": "progressive.enabled"}


def seed_dir(root: Path | str, seed: int) -> Path:
    return Path(root) / f"seed{int(seed)}"


def _flag(value) -> bool | None:
    if value is None or (isinstance(value, float) and value != value):
        return None
    return str(value).strip().lower() in ("true", "1")


def member_meta(row: pd.Series, seed: int, n_images: int) -> dict:
    """What the analysis needs to know of a member besides its values."""
    get = lambda k: row.get(k) if k in row.index else None  # noqa: E731
    return {"member": str(row["member"]), "method": str(row["method"]), "seed": int(seed),
            "switches": {name: _flag(get(f"params.{key}")) for name, key in SWITCHES.items()},
            "loss_weights": {term: float(get(f"params.{key}")) for term, key in LOSS_WEIGHTS.items()
                             if get(f"params.{key}") is not None},
            "steps": int(float(get("params.max_steps"))) if get("params.max_steps") is not None else None,
            "config_hash": get("tags.config_hash"), "git_sha": get("tags.git_sha"), "run_id": str(row["run_id"]),
            "n_images": int(n_images), "grid": get("tags.grid")}


def training_curves(run_id: str, uri: str, bin_steps: int = TRAIN_BIN) -> pd.DataFrame:
    """The run's ``train/*`` and ``val/*`` histories, averaged in bins of ``bin_steps`` steps (wide)."""
    from experiments import report as R

    keys = [k for k in R.training_keys(run_id, uri, min_points=1) if k.startswith(("train/", "val/"))]
    hist = R.training_history(run_id, keys, uri)
    if hist.empty:
        return pd.DataFrame(columns=["step"])
    hist["step"] = -(-hist["step"].clip(lower=1) // bin_steps) * bin_steps
    return hist.pivot_table(index="step", columns="key", values="value", aggfunc="mean").reset_index()


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text), mode="w")


def export_seed(uri: str, seed: int, root: Path | str = DATA_ROOT, experiment: str = "synth",
                grid: str = GRID, gradients: bool = False, workdir: Path | str = ".") -> list[str]:
    """Export every finished, evaluated member of ``grid`` in the store ``uri``; returns their names."""
    from experiments import report as R

    runs = R.member_runs(experiment, grid, uri=uri)
    if runs.empty:
        raise LookupError(f"{uri}: no finished member of grid {grid!r} in experiment {experiment!r}")
    seeds = {int(float(s)) for s in runs.get("params.seed", pd.Series(dtype=object)).dropna()}
    if seeds and seeds != {int(seed)}:
        raise ValueError(f"{uri}: its runs were trained with seed {sorted(seeds)}, not {seed}")
    done = []
    for name, row in runs.iterrows():
        per = R.per_image(row["run_id"], uri)
        if per is None or per.empty:
            continue
        out = seed_dir(root, seed) / name
        metrics = {k[len("metrics.test/"):]: float(v) for k, v in row.items()
                   if k.startswith("metrics.test/") and v == v}
        _write_text(out / "per_image.csv", per.to_csv(index=False))
        _write_text(out / "metrics.json", json.dumps(dict(sorted(metrics.items())), indent=1) + "\n")
        _write_text(out / "training.csv", training_curves(row["run_id"], uri).to_csv(index=False, float_format="%.6g"))
        _write_text(out / "meta.json", json.dumps(member_meta(row, seed, len(per)), indent=1) + "\n")
        final = row.get("tags.final_checkpoint") if "tags.final_checkpoint" in row.index else None
        if gradients and isinstance(final, str) and (Path(final).parent / "last.pt").is_file():
            from experiments.ablation.gradients import gradient_shares

            shares = gradient_shares(Path(final).parent, workdir=workdir)
            _write_text(out / "gradients.json", json.dumps(shares, indent=1) + "\n")
        done.append(str(name))
    return done


def load_seed(path: Path | str) -> dict[str, dict]:
    """``{member: {"per_image": DataFrame, "metrics": dict, "meta": dict}}`` of one exported seed."""
    out = {}
    for d in sorted(p for p in Path(path).iterdir() if (p / "meta.json").is_file()):
        out[d.name] = {"per_image": pd.read_csv(d / "per_image.csv"),
                       "metrics": json.loads((d / "metrics.json").read_text()),
                       "meta": json.loads((d / "meta.json").read_text()),
                       "training": pd.read_csv(d / "training.csv") if (d / "training.csv").is_file() else None,
                       "gradients": json.loads((d / "gradients.json").read_text())
                       if (d / "gradients.json").is_file() else {}}
    return out


def load_study(root: Path | str = DATA_ROOT) -> dict[int, dict[str, dict]]:
    """Every exported seed under ``root``: ``{seed: load_seed(...)}``."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no exported ablation study at {root} (python -m experiments.ablation export ...)")
    seeds = {}
    for d in sorted(root.glob("seed*")):
        if d.is_dir() and d.name[4:].isdigit():
            seeds[int(d.name[4:])] = load_seed(d)
    return {s: m for s, m in seeds.items() if m}
