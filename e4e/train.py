"""ONE trainer for every encoder method (docs/design.md §1, §5, §6; issue 4).

Methods: ``e4e`` (Encoder4Editing), ``psp`` (GradualStyleEncoder, W+), ``w_encoder`` (one W code
repeated), ``restyle_e4e`` / ``restyle_psp`` (N refinement iterations per batch, each iteration's
loss back-propagated, one optimizer step per batch: official ReStyle). The inverter is built by name
from the registry (``e4e.inverter``); the generator is frozen.

Per step (0-based index ``s``):
1. progressive stage = f(s) (pure function of the step, so resume is exact); stage k activates
   offsets 1..k (rows 0..k); with ``progressive.enabled=false`` every row is active from step 0.
2. encoder forward -> codes (latent_avg added) -> G(codes) -> image losses (L2, LPIPS, ID) + the
   latent terms on the active rows: delta-reg (``delta_reg.enabled``) and the non-saturating
   adversarial loss (``adversarial.enabled``); backward.
3. latent D step (if adversarial): real = mapping(z), fake = the SAME detached codes the encoder was
   penalised on (every active row, latent_avg included; for ReStyle every iteration's codes), both
   through codes pools; R1 on real every ``r1_every`` steps (gamma/2 * R1 * r1_every). Encoder and
   D are updated from the same pre-update states (simultaneous updates).
4. encoder optimizer step.

Checkpoints ``last.pt`` / ``best.pt`` (validation split, never test) in ``out_dir`` hold the encoder,
both optimizers, the latent D, the pools, the step, every rank's RNG states, the data order, the
config, the MLflow run id and the metric rows not yet written to MLflow. Metrics are buffered and
written right after each checkpoint; a run killed between checkpoints restarts from ``last.pt`` and
replays the unflushed steps deterministically, so each metric step lands exactly once in the SAME
MLflow run. DDP: ``torchrun`` (gloo on CPU, nccl on GPU) — the encoder is wrapped in
DistributedDataParallel, the latent D's gradients are all-reduced explicitly (R1's double backward
needs no DDP support), each rank draws its own shard of a shared per-epoch permutation; rank 0
logs and writes checkpoints.
"""
from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from e4e import checkpoints as CK
from e4e import config as C
from e4e import dist as D
from e4e.cli import resolve_device
from e4e.dist import DistInfo
from e4e.methods import TRAINED_METHODS, load_inverters
from e4e import losses as L
from e4e import tracking as T
from e4e.optim import build_optimizer

CKPT_FORMAT = "e4e-lab-train"
ENCODER_METHODS = TRAINED_METHODS


# ---------------------------------------------------------------------------------------------
# registry / domain helpers
# ---------------------------------------------------------------------------------------------
def domain_info(domain: str) -> Any:
    from e4e.data import DOMAINS

    try:
        return DOMAINS[domain]
    except KeyError:
        raise C.ConfigError(f"unknown data.domain {domain!r}; known: {sorted(DOMAINS)}") from None


def progressive_schedule(cfg: C.TrainConfig) -> tuple[int, int]:
    """(start, interval) after scaling to ``max_steps`` for short runs."""
    p = cfg.progressive
    start, interval = p.start, p.interval
    if p.scale_with_steps and cfg.max_steps < p.reference_steps:
        f = cfg.max_steps / p.reference_steps
        start, interval = int(round(start * f)), max(1, int(round(interval * f)))
    return start, interval


def progressive_stage(step: int, n_latent: int, start: int, interval: int) -> int:
    """Number of active offsets at 0-based ``step``: 0 before ``start``, then one more every ``interval``."""
    if step < start:
        return 0
    return min(n_latent - 1, 1 + (step - start) // interval)


# ---------------------------------------------------------------------------------------------
# data order: a seeded permutation per epoch, sharded over ranks, resumable (epoch, position)
# ---------------------------------------------------------------------------------------------
class ShardedOrder:
    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        if n < batch_size * world:
            raise ValueError(f"the training set has {n} images, fewer than one global batch "
                             f"({batch_size} x {world} processes)")
        self.n, self.batch, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.epoch, self.pos = 0, 0
        self._perm = None

    def _permutation(self) -> torch.Tensor:
        if self._perm is None or self._perm[0] != self.epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            self._perm = (self.epoch, torch.randperm(self.n, generator=g))
        return self._perm[1]

    def next_indices(self) -> list[int]:
        span = self.batch * self.world
        if self.pos + span > self.n:  # drop_last
            self.epoch, self.pos = self.epoch + 1, 0
        chunk = self._permutation()[self.pos:self.pos + span]
        self.pos += span
        return chunk[self.rank::self.world].tolist()

    def peek_epoch(self) -> list[list[int]]:
        """This rank's index lists for the rest of the current epoch (state unchanged)."""
        span, perm, out = self.batch * self.world, self._permutation(), []
        for pos in range(self.pos, self.n - span + 1, span):
            out.append(perm[pos:pos + span][self.rank::self.world].tolist())
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, sd: dict) -> None:
        self.epoch, self.pos = int(sd["epoch"]), int(sd["pos"])


def _item_image(item) -> torch.Tensor:
    if isinstance(item, dict):
        item = item.get("image", next(iter(item.values())))
    if isinstance(item, (tuple, list)):
        item = item[0]
    return item


def _fetch(dataset, indices: list[int]) -> torch.Tensor:
    return torch.stack([_item_image(dataset[i]) for i in indices]).float()


def _collate(items) -> torch.Tensor:
    return torch.stack([_item_image(i) for i in items]).float()


class BatchStream:
    """Batches in ``ShardedOrder`` order; with ``num_workers > 0`` a DataLoader prefetches the rest of
    the epoch (index lists fixed in advance, so the order, and hence resume, is identical)."""

    def __init__(self, dataset, order: ShardedOrder, num_workers: int = 0):
        self.dataset, self.order, self.num_workers = dataset, order, num_workers
        self._it, self._epoch = None, None

    def next(self) -> torch.Tensor:
        idx = self.order.next_indices()
        if self.num_workers <= 0:
            return _fetch(self.dataset, idx)
        if self._it is None or self._epoch != self.order.epoch:
            batches = [idx] + self.order.peek_epoch()
            loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=batches, num_workers=self.num_workers,
                                                 collate_fn=_collate,
                                                 generator=torch.Generator().manual_seed(self.order.seed))
            self._it, self._epoch = iter(loader), self.order.epoch
        return next(self._it)

    def close(self) -> None:
        self._it = None


def _flip(x: torch.Tensor, seed: int, step: int, rank: int) -> torch.Tensor:
    """Random horizontal flip with a generator derived from (seed, step, rank): worker/resume proof."""
    g = torch.Generator().manual_seed((seed * 7_919 + step) * 131 + rank)
    mask = torch.rand(x.shape[0], generator=g) < 0.5
    if mask.any():
        x = x.clone()
        x[mask] = x[mask].flip(-1)
    return x


DATA_ROOT = Path("data")  # default folders: data/<domain>/{train,val} (python -m experiments.synth build)


def default_data_dirs(domain: str) -> tuple[Path, Path]:
    return DATA_ROOT / domain / "train", DATA_ROOT / domain / "val"


def _build_datasets(cfg: C.TrainConfig, input_size):
    """(train, val) image folders: ``data.train_dir`` (default data/<domain>/train) and
    ``data.val_dir`` (default data/<domain>/val when it exists, else a seeded ``val_fraction``
    hold-out of the training folder; never the test split)."""
    from e4e.data import ImageFolderDataset

    d_train, d_val = default_data_dirs(cfg.data.domain)
    train_dir = Path(cfg.data.train_dir) if cfg.data.train_dir else d_train
    if not train_dir.is_dir():
        raise C.ConfigError(f"training images not found: {train_dir} (set data.train_dir"
                            + (", or run `python -m experiments.synth build --out data/synth`)"
                               if cfg.data.domain == "synth" else ")"))
    val_dir = Path(cfg.data.val_dir) if cfg.data.val_dir else (d_val if not cfg.data.train_dir and d_val.is_dir()
                                                              else None)
    if cfg.data.scan:
        from e4e.data import check_image_folder

        hw = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        for folder in [train_dir] + ([val_dir] if val_dir is not None else []):
            try:
                check_image_folder(folder, hw, cfg.data.strict_size)
            except ValueError as e:
                raise C.ConfigError(str(e)) from None
    full = ImageFolderDataset(train_dir, size=input_size)
    if val_dir is not None:
        return full, ImageFolderDataset(val_dir, size=input_size)
    n = len(full)
    n_val = int(round(n * cfg.data.val_fraction))
    if n_val == 0:
        return full, None
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed + 12345)).tolist()
    return torch.utils.data.Subset(full, sorted(perm[n_val:])), torch.utils.data.Subset(full, sorted(perm[:n_val]))


# ---------------------------------------------------------------------------------------------
# method adapters (the only place that knows how a method's forward is called while training)
# ---------------------------------------------------------------------------------------------
class _CodesForward(nn.Module):
    """What DDP wraps: images (+ previous codes / image for ReStyle) -> W+ codes with latent_avg."""

    def __init__(self, inverter: nn.Module):
        super().__init__()
        self.inverter = inverter

    def forward(self, x, w_prev=None, y_prev=None):
        if y_prev is None:
            return self.inverter.invert(x)
        return self.inverter.refine(x, y_prev, w_prev)


def _encoder_of(inverter):
    return getattr(inverter, "encoder", inverter)


def supports_progressive(inverter) -> bool:
    enc = _encoder_of(inverter)
    return hasattr(enc, "set_progressive_stage") or hasattr(enc, "progressive_stage")


def set_stage(inverter, stage: int) -> None:
    enc = _encoder_of(inverter)
    if hasattr(enc, "set_progressive_stage"):
        enc.set_progressive_stage(stage)
    else:
        enc.progressive_stage = stage


@dataclass
class _Ctx:
    cfg: C.TrainConfig
    inverter: nn.Module
    model: nn.Module                 # _CodesForward, possibly DDP-wrapped
    recon: L.ReconstructionLoss
    disc: nn.Module | None
    n_active: int = 0
    avg_image: torch.Tensor | None = None
    synthesis: Callable | None = None  # the generator call of the step (compiled under cfg.compile)

    def autocast(self, device_type: str):
        """bfloat16 autocast of the forward under ``precision: bf16``; a no-op context in fp32."""
        return torch.autocast(device_type, dtype=torch.bfloat16, enabled=self.cfg.precision == "bf16")

    def latent_terms(self, codes: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.cfg
        total = codes.new_zeros(())
        logs: dict[str, float] = {}
        if cfg.delta_reg.enabled and cfg.delta_reg.weight > 0:
            d = L.delta_reg_loss(codes, self.n_active)
            total = total + cfg.delta_reg.weight * d
            logs["loss_delta_reg"] = float(d.detach())
        if self.disc is not None:
            a = L.encoder_adv_loss(self.disc, codes[:, :self.n_active])
            total = total + cfg.adversarial.weight * a
            logs["loss_adv"] = float(a.detach())
        return total, logs

    def image_and_loss(self, codes, x):
        generate = self.synthesis or self.inverter.generate
        y_hat = generate(codes, noise_mode=self.cfg.model.noise_mode)
        y_hat = L.match_size(y_hat, x.shape[-2:])
        if self.cfg.precision != "fp32":
            y_hat, codes = y_hat.float(), codes.float()
        loss, logs = self.recon(y_hat, x)
        lt, llogs = self.latent_terms(codes)
        logs.update(llogs)
        loss = loss + lt
        logs["loss"] = float(loss.detach())
        return loss, logs, y_hat


NonFiniteError = L.NonFiniteError  # raised by this trainer; defined with the losses (CLIs catch it from there)


def non_finite_terms(logs: dict, params) -> dict[str, float]:
    """The loss terms in ``logs`` that are not finite, plus ``grad_norm`` when a gradient is not."""
    bad = {k: v for k, v in logs.items() if isinstance(v, float) and not math.isfinite(v)}
    grads = [p.grad for p in params if p.grad is not None]
    if grads:
        norm = float(torch.stack(torch._foreach_norm(grads)).norm())
        if not math.isfinite(norm):
            bad["grad_norm"] = norm
    return bad


def _single_pass_step(ctx: _Ctx, x: torch.Tensor):
    with ctx.autocast(x.device.type):
        codes = ctx.model(x)
        loss, logs, _ = ctx.image_and_loss(codes, x)
    loss.backward()
    return logs, [codes.detach().float()[:, :ctx.n_active]]


def _restyle_step(ctx: _Ctx, x: torch.Tensor):
    """Official ReStyle training: iteration 0 starts from (latent_avg, its image); each iteration's
    loss is back-propagated on its own (inputs detached); one optimizer step per batch. Logged
    losses are those of the last iteration, plus ``loss_iters_mean``."""
    n_iter = ctx.cfg.model.restyle_iters
    y_prev = ctx.avg_image.expand(x.shape[0], -1, -1, -1)
    w_prev = ctx.inverter.latent_avg.unsqueeze(0).expand(x.shape[0], -1, -1)
    fakes, total = [], 0.0
    logs: dict[str, float] = {}
    for _ in range(n_iter):
        with ctx.autocast(x.device.type):
            codes = ctx.model(x, w_prev.detach(), y_prev.detach())
            loss, logs, y_hat = ctx.image_and_loss(codes, x)
        loss.backward()
        total += float(loss.detach())
        fakes.append(codes.detach().float()[:, :ctx.n_active])
        w_prev, y_prev = codes, y_hat
    logs["loss_iters_mean"] = total / n_iter
    return logs, fakes


STEP_FNS: dict[str, Callable] = {"e4e": _single_pass_step, "psp": _single_pass_step,
                                 "w_encoder": _single_pass_step, "restyle_e4e": _restyle_step,
                                 "restyle_psp": _restyle_step}


@torch.no_grad()
def _inference(inverter, x):
    return inverter.invert(x)


# ---------------------------------------------------------------------------------------------
# latent discriminator
# ---------------------------------------------------------------------------------------------
def _pool_state(pool) -> Any:
    if pool is None:
        return None
    if hasattr(pool, "state_dict"):
        return pool.state_dict()
    return {k: (list(v) if isinstance(v, list) else v) for k, v in vars(pool).items()}


def _pool_load(pool, state) -> None:
    if pool is None or state is None:
        return
    if hasattr(pool, "load_state_dict"):
        pool.load_state_dict(state)
    else:
        for k, v in state.items():
            setattr(pool, k, list(v) if isinstance(v, list) else v)


def _disc_step(cfg, disc, d_opt, pools, generator, fakes: list[torch.Tensor], step: int, info: DistInfo,
               batch: int) -> dict[str, float]:
    device = fakes[0].device
    fake = torch.cat([f.reshape(-1, f.shape[-1]) for f in fakes])
    with torch.no_grad():
        real = generator.mapping(torch.randn(batch, generator.style_dim, device=device))
    if pools is not None:
        real, fake = pools[0].query(real), pools[1].query(fake)
    disc.requires_grad_(True)
    real_pred, fake_pred = disc(real), disc(fake)
    dl = L.disc_loss(real_pred, fake_pred)
    d_opt.zero_grad(set_to_none=True)
    dl.backward()
    D.allreduce_grads(disc.parameters(), info.world, zero_missing=False)
    d_opt.step()
    logs = {"loss_d": float(dl.detach()), "d_real": float(real_pred.detach().mean()),
            "d_fake": float(fake_pred.detach().mean())}
    if step % cfg.adversarial.r1_every == 0 and cfg.adversarial.r1_gamma > 0:
        r1 = L.r1_penalty(disc, real)
        d_opt.zero_grad(set_to_none=True)
        (cfg.adversarial.r1_gamma / 2 * r1 * cfg.adversarial.r1_every).backward()
        D.allreduce_grads(disc.parameters(), info.world, zero_missing=False)
        d_opt.step()
        logs["loss_r1"] = float(r1.detach())
    disc.requires_grad_(False)
    return logs


# ---------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------
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


def load_training_checkpoint(path: str | Path) -> dict:
    """A training checkpoint of this trainer, loaded with ``weights_only=True`` (a file that is not a
    checkpoint, is truncated, or pickles Python objects raises ValueError naming it)."""
    from e4e.checkpoints import load_checkpoint

    ck = load_checkpoint(path)
    if not isinstance(ck, dict) or ck.get("format") != CKPT_FORMAT:
        raise ValueError(f"{path} is not an e4e-lab training checkpoint (format {CKPT_FORMAT!r})")
    return ck


# ---------------------------------------------------------------------------------------------
# the trainer
# ---------------------------------------------------------------------------------------------
@dataclass
class _State:
    step: int = 0
    best_val: float = math.inf
    best_step: int = -1
    run_id: str | None = None
    own_run: bool = False
    last_logs: dict = field(default_factory=dict)


def default_out_dir(cfg: C.TrainConfig) -> Path:
    return Path("runs") / cfg.data.domain / f"{cfg.model.method}-{C.config_hash(cfg, 10)}"


def _build_inverter(cfg: C.TrainConfig, generator, latent_avg, input_size):
    from e4e.inverter import get_inverter

    load_inverters()
    factory = get_inverter(cfg.model.method)
    kwargs = dict(cfg.model.encoder)
    if cfg.model.method.startswith("restyle_"):
        kwargs.setdefault("n_iters", cfg.model.restyle_iters)
    inv = factory(generator, latent_avg=latent_avg, input_size=input_size, **kwargs)
    if cfg.model.trunk_init:
        _init_trunk(cfg, _encoder_of(inv))
    if cfg.model.init_checkpoint:
        from e4e.checkpoints import load_inverter

        src = load_inverter(cfg.model.init_checkpoint)
        _encoder_of(inv).load_state_dict(_encoder_of(src).state_dict(), strict=True)
    return inv


def _init_trunk(cfg: C.TrainConfig, encoder: nn.Module) -> None:
    """``model.trunk_init``: copy a pretrained trunk into the encoder (extra input channels of
    6-channel encoders are N(0,1) from a generator seeded by ``cfg.seed``); a file that is missing or
    does not fit the encoder is a ConfigError naming it."""
    from e4e.weights import WeightsMissingError

    spec, seeded = cfg.model.trunk_init, torch.Generator().manual_seed(cfg.seed)
    try:
        if spec == "ir_se50":
            CK.init_encoder_from_irse50(encoder, generator=seeded)
        else:
            CK.init_encoder_from_trunk(encoder, SYNTH_TRUNK if spec == "synth" else spec, generator=seeded)
    except WeightsMissingError:
        raise
    except (ValueError, FileNotFoundError) as e:
        raise C.ConfigError(f"model.trunk_init={spec!r}: {e}") from None


def _weights_path(key: str) -> Callable[[], Path]:
    def find() -> Path:
        from e4e.weights import require

        return require(key)
    return find


SYNTH_GENERATOR = Path(__file__).resolve().parent / "synth" / "assets" / "generator_synth64.pt"
SYNTH_TRUNK = SYNTH_GENERATOR.with_name("encoder_trunk_synth64.pt")  # model.trunk_init=synth
DEFAULT_GENERATORS: dict[str, Callable[[], Path]] = {
    "synth": lambda: SYNTH_GENERATOR,
    "ffhq": _weights_path("stylegan2_ffhq"), "cars": _weights_path("stylegan2_cars"),
    "horse": _weights_path("stylegan2_horse"), "church": _weights_path("stylegan2_church"),
}


def default_generator_path(domain: str) -> Path:
    try:
        return DEFAULT_GENERATORS[domain]()
    except KeyError:
        raise C.ConfigError(f"model.generator is empty and domain {domain!r} has no default generator") from None


def _load_generator(cfg, generator):
    if generator is None:
        from e4e.checkpoints import load_generator

        path = cfg.model.generator or default_generator_path(cfg.data.domain)
        # the configs name package assets relative to the repository root ("e4e/synth/assets/..."):
        # found from any working directory
        packaged = Path(__file__).resolve().parents[1] / path
        if not Path(path).is_absolute() and not Path(path).exists() and packaged.is_file():
            path = packaged
        generator = load_generator(path)
        spec = domain_info(cfg.data.domain)
        if (generator.size, generator.n_latent) != (spec.gen_size, spec.n_latent):
            raise C.ConfigError(f"{path}: a {generator.size} px generator with {generator.n_latent} W+ rows, but "
                                f"domain {cfg.data.domain!r} is {spec.gen_size} px with {spec.n_latent} rows "
                                f"(set data.domain or model.generator)")
    return generator


def _identity_kind(cfg, dom) -> str:
    return dom.identity if cfg.loss.id_kind == "auto" else cfg.loss.id_kind


def _save_grid(path: Path, x: torch.Tensor, y_hat: torch.Tensor, *edited: torch.Tensor) -> Path:
    """One row each: inputs, inversions, then one row per edit of the inversions."""
    from torchvision.utils import save_image

    rows = torch.cat([x] + [L.match_size(y, x.shape[-2:]) for y in (y_hat, *edited)]).clamp(-1, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(rows, path, nrow=x.shape[0], normalize=True, value_range=(-1, 1))
    return path


def train(cfg: C.TrainConfig, *, run_id: str | None = None, generator: nn.Module | None = None,
          train_set=None, val_set=None, perceptual: nn.Module | None = None,
          identity: L.IdentityLoss | None = None, stop_after: int | None = None,
          tracking_uri: str | None = None) -> dict:
    """Train ``cfg.model.method`` and return a summary dict.

    Resumes automatically from ``<out_dir>/last.pt`` into the run recorded there. ``run_id`` logs into
    an existing MLflow run (a grid member); ``generator`` / ``train_set`` / ``val_set`` replace the
    ones the config names (tests, notebooks); ``perceptual`` / ``identity`` replace the loss networks;
    ``stop_after`` returns right after that many steps without checkpoint or flush (a simulated
    kill). Summary keys: run_id, step, checkpoint (best inverter if validation ran, else final),
    final_checkpoint, best_checkpoint, last_checkpoint, final_losses, best_val, best_step, out_dir,
    config_hash, stopped.
    """
    if cfg.model.method not in STEP_FNS:
        raise C.ConfigError(f"model.method {cfg.model.method!r} is not a trained method; trained: {sorted(STEP_FNS)}"
                            " (optimisation methods run in baselines.optim / experiments.invert)")
    device = resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    info = D.setup(device)
    from e4e.fileio import DirLock

    # one process per run directory: a second trainer (or grid) on the same out_dir stops with LockedError;
    # taking the lock (it creates out_dir and a file in it) is also the check that out_dir is writable
    lock = DirLock(Path(cfg.out_dir) if cfg.out_dir else default_out_dir(cfg))
    try:
        if info.main:
            try:
                lock.acquire()
            except OSError as exc:
                raise C.ConfigError(f"out_dir {lock.path.parent} is not writable ({exc.strerror or exc})") from None
        return _train(cfg, info, device, run_id, generator, train_set, val_set, perceptual, identity, stop_after,
                      tracking_uri)
    finally:
        lock.release()
        D.cleanup(info)


def _train(cfg, info, device, run_id, generator, train_set, val_set, perceptual, identity, stop_after, tracking_uri):
    t_start = time.perf_counter()
    chash = C.config_hash(cfg)
    out_dir = Path(cfg.out_dir) if cfg.out_dir else default_out_dir(cfg)
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    final_inv_path, best_inv_path = out_dir / "inverter.pt", out_dir / "best_inverter.pt"

    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    dom = domain_info(cfg.data.domain)

    # -- generator, inverter --------------------------------------------------------------------
    generator = _load_generator(cfg, generator).to(device).eval().requires_grad_(False)
    latent_avg = getattr(generator, "latent_avg", None)
    if latent_avg is None:
        latent_avg = generator.mean_latent(10_000, seed=cfg.seed)
    if latent_avg.ndim == 1:
        latent_avg = latent_avg.unsqueeze(0)
    input_size = cfg.data.image_size or (tuple(dom.enc_input) if train_set is None else None) or \
        min(256, generator.size)
    inverter = _build_inverter(cfg, generator, latent_avg.to(device), input_size).to(device)
    inverter.decoder.requires_grad_(False)
    n_latent = generator.n_latent
    progressive = cfg.progressive.enabled
    if progressive and not supports_progressive(inverter):
        raise C.ConfigError(f"method {cfg.model.method!r} has no progressive stages; set progressive.enabled=false")
    if supports_progressive(inverter) and not progressive:
        set_stage(inverter, n_latent - 1)
    prog_start, prog_interval = progressive_schedule(cfg)
    params = [p for n, p in inverter.named_parameters() if p.requires_grad and not n.startswith("decoder.")]
    optimizer = build_optimizer(cfg.optim.name, params, cfg.optim.lr, cfg.optim.weight_decay)

    # -- latent discriminator -------------------------------------------------------------------
    disc = d_opt = pools = None
    if cfg.adversarial.enabled and cfg.adversarial.weight > 0:
        from e4e.models.latent_disc import LatentCodesDiscriminator, LatentCodesPool

        disc = LatentCodesDiscriminator(generator.style_dim, 4).to(device).requires_grad_(False)
        d_opt = torch.optim.Adam(disc.parameters(), lr=cfg.adversarial.d_lr)
        if cfg.adversarial.pool_size > 0:
            pools = (LatentCodesPool(cfg.adversarial.pool_size), LatentCodesPool(cfg.adversarial.pool_size))

    # -- losses (a missing pretrained file stops here, before any step) ---------------------------
    id_kind = _identity_kind(cfg, dom) if cfg.loss.id_lambda > 0 and identity is None else ""
    recon = L.ReconstructionLoss.from_config(cfg.loss, id_kind, device, perceptual=perceptual,
                                             identity=identity).to(device)

    vis_edits = _load_edits(cfg, generator) if info.main else []  # a missing direction file stops here too

    # -- data -------------------------------------------------------------------------------------
    if train_set is None:
        train_set, auto_val = _build_datasets(cfg, input_size)
        val_set = val_set if val_set is not None else auto_val
    order = ShardedOrder(len(train_set), cfg.batch_size, cfg.seed, info.rank, info.world)
    stream = BatchStream(train_set, order, cfg.data.num_workers)

    # -- DDP wrapper ------------------------------------------------------------------------------
    model: nn.Module = _CodesForward(inverter)
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
                    find_unused_parameters=True)

    avg_image = None
    if cfg.model.method.startswith("restyle_"):
        with torch.no_grad():
            avg_image = L.match_size(inverter.generate(inverter.latent_avg.unsqueeze(0), noise_mode="const"),
                                     _fetch(train_set, [0]).shape[-2:]).to(device)
    synthesis = torch.compile(inverter.generate) if cfg.compile else None
    ctx = _Ctx(cfg, inverter, model, recon, disc, n_latent, avg_image, synthesis)

    # -- resume -----------------------------------------------------------------------------------
    state = _State()
    pending: list = []
    if last_path.is_file():
        ck = load_training_checkpoint(last_path)
        if ck["config_hash"] != chash:
            raise C.ConfigError(f"{last_path} was written by a different configuration "
                                f"(config_hash {ck['config_hash'][:10]} != {chash[:10]}); use another out_dir")
        missing, unexpected = inverter.load_state_dict(ck["inverter"], strict=False)
        bad = [k for k in missing if not k.startswith("decoder.")] + list(unexpected)
        if bad:
            raise ValueError(f"{last_path}: inverter state does not match the model: {bad[:8]}")
        optimizer.load_state_dict(ck["optimizer"])
        if disc is not None:
            disc.load_state_dict(ck["disc"])
            d_opt.load_state_dict(ck["disc_opt"])
            if pools is not None:
                per_rank = ck["pools"]
                _pool_load(pools[0], per_rank[info.rank][0])
                _pool_load(pools[1], per_rank[info.rank][1])
        order.load_state_dict(ck["data_order"])
        state = _State(ck["step"], ck["best_val"], ck["best_step"], ck["run_id"], ck.get("own_run", False),
                       ck.get("last_logs", {}))
        pending = ck.get("pending_metrics", [])
        CK.set_rng_state(ck["rng"][info.rank])
    else:
        torch.manual_seed(cfg.seed + 1_000_003 * info.rank)  # per-rank noise / z streams
    run_id = run_id or state.run_id

    # -- MLflow (rank 0) --------------------------------------------------------------------------
    client = None
    own_run = False
    if info.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        C.save_yaml(cfg, out_dir / "config.yaml")
        client = T.get_client(tracking_uri)
        tags = {**T.system_tags(device), "method": cfg.model.method, "config_hash": chash,
                "out_dir": str(out_dir.resolve()), "world_size": info.world,
                "loss.identity": id_kind or "-",
                "loss.perceptual": cfg.loss.lpips_net if cfg.loss.lpips_lambda else "-"}
        if run_id is None:
            run_id = _orphan_run(client, out_dir, chash)   # killed before its first checkpoint: adopt it
            own_run = run_id is not None
            if run_id is None:
                exp_id = T.get_or_create_experiment(client, cfg.experiment or cfg.data.domain)
                run = client.create_run(exp_id, run_name=cfg.run_name or f"{cfg.model.method}-{chash[:8]}")
                run_id, own_run = run.info.run_id, True
                _write_run_file(out_dir, run_id, chash)
            client.update_run(run_id, status="RUNNING")
        else:
            # a run this trainer created (recorded in the checkpoint) vs one handed in (a grid member)
            own_run = bool(state.run_id) and run_id == state.run_id and state.own_run
            client.update_run(run_id, status="RUNNING")
        T.set_tags(client, run_id, tags)
        existing = client.get_run(run_id).data.params
        T.log_params(client, run_id, {k: v for k, v in T.flatten_params(C.to_dict(cfg)).items() if k not in existing})
        if state.step == 0 and not last_path.is_file():
            client.log_artifact(run_id, str(out_dir / "config.yaml"))
        if pending:  # rows saved with the checkpoint but possibly not flushed before the kill
            T.flush_pending(client, run_id, pending)
    run_id = D.broadcast_object(run_id, info.world)

    buffer = T.MetricBuffer()
    fixed_vis = None
    vis_source = val_set if val_set is not None and len(val_set) else train_set
    if info.main:
        fixed_vis = _fetch(vis_source, list(range(min(4, len(vis_source))))).to(device)

    def checkpoint(path: Path, step: int) -> None:
        rng_all = D.gather_object(CK.rng_state(), info.world)
        pools_all = D.gather_object((_pool_state(pools[0]), _pool_state(pools[1])) if pools else (None, None),
                                    info.world)
        if not info.main:
            return
        ck = {"format": CKPT_FORMAT, "version": 1, "step": step, "method": cfg.model.method,
              "config": C.to_dict(cfg), "config_hash": chash, "inverter": _trainable_state(inverter),
              "optimizer": optimizer.state_dict(), "disc": disc.state_dict() if disc is not None else None,
              "disc_opt": d_opt.state_dict() if d_opt is not None else None, "pools": pools_all,
              "rng": rng_all, "data_order": order.state_dict(), "run_id": run_id, "own_run": own_run,
              "best_val": state.best_val, "best_step": state.best_step, "last_logs": state.last_logs,
              "pending_metrics": list(buffer.rows), "n_latent": n_latent,
              "generator": cfg.model.generator, "world_size": info.world}
        _atomic_save(ck, path)

    def save_inverter_file(path: Path) -> Path:
        from e4e.checkpoints import save_inverter

        save_inverter(inverter, path, config=C.to_dict(cfg))
        return path

    # -- loop -------------------------------------------------------------------------------------
    step_fn = STEP_FNS[cfg.model.method]
    bar = None
    if info.main and cfg.progress:
        from e4e.progress import Progress

        bar = Progress(cfg.max_steps, f"train {cfg.model.method}", unit="step", initial=state.step)
    inverter.train()
    stopped = False
    t_loop = time.perf_counter()
    steps_run = 0
    step_times: list[float] = []
    while state.step < cfg.max_steps:
        t_step = time.perf_counter()
        s = state.step
        stage = progressive_stage(s, n_latent, prog_start, prog_interval) if progressive else n_latent - 1
        if progressive:
            set_stage(inverter, stage)
        ctx.n_active = stage + 1
        x = stream.next()
        if cfg.data.hflip:
            x = _flip(x, cfg.seed, s, info.rank)
        x = x.to(device, non_blocking=True)

        optimizer.zero_grad(set_to_none=True)
        logs, fakes = step_fn(ctx, x)
        bad = non_finite_terms(logs, params)
        if bad:  # stop before the optimiser (and any checkpoint) sees it
            msg = f"non-finite training values at step {s + 1}: {bad}"
            if info.main and client is not None:
                buffer.flush(client, run_id)
                client.set_tag(run_id, "error", msg[:4000])
                if own_run:
                    client.set_terminated(run_id, "FAILED")
            raise NonFiniteError(msg)
        if disc is not None:
            logs.update(_disc_step(cfg, disc, d_opt, pools, generator, fakes, s, info, cfg.batch_size))
        optimizer.step()
        step_times.append(time.perf_counter() - t_step)
        state.step = s + 1
        steps_run += 1
        logs["progressive_stage"] = stage
        state.last_logs = logs
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{logs['loss']:.4f}", stage=stage)

        if info.main and (state.step % cfg.log_every == 0 or state.step == cfg.max_steps):
            buffer.add_dict({f"train/{k}": v for k, v in logs.items()}, state.step)
        if info.main and (state.step % cfg.image_every == 0 or state.step == cfg.max_steps):
            _log_grid(client, run_id, inverter, fixed_vis, out_dir, state.step, vis_edits)
        if state.step % cfg.val_every == 0 or state.step == cfg.max_steps:
            improved = False
            if info.main and val_set is not None and len(val_set):
                vlogs = _validate(inverter, recon, val_set, cfg, device)
                buffer.add_dict({f"val/{k}": v for k, v in vlogs.items()}, state.step)
                if vlogs["loss"] < state.best_val:
                    improved = True
                    state.best_val, state.best_step = vlogs["loss"], state.step
                    buffer.add("val/best_loss", state.best_val, state.step)
            improved = D.broadcast_object(improved, info.world)
            if improved:
                state.best_val, state.best_step = D.broadcast_object((state.best_val, state.best_step), info.world)
                checkpoint(best_path, state.step)
                if info.main:
                    save_inverter_file(best_inv_path)
        if stop_after is not None and steps_run >= stop_after and state.step < cfg.max_steps:
            stopped = True
            break
        if state.step % cfg.ckpt_every == 0 or state.step == cfg.max_steps:
            checkpoint(last_path, state.step)
            if info.main:
                buffer.flush(client, run_id)
    stream.close()
    if bar is not None:
        bar.close()
    step_time = (time.perf_counter() - t_loop) / max(1, steps_run)
    median_step = float(np.median(step_times)) if step_times else float("nan")

    summary = {"run_id": run_id, "step": state.step, "out_dir": str(out_dir), "config_hash": chash,
               "final_losses": dict(state.last_logs), "best_val": state.best_val, "best_step": state.best_step,
               "last_checkpoint": str(last_path), "stopped": stopped, "sec_per_step": step_time,
               "sec_per_step_median": median_step, "sec_first_step": step_times[0] if step_times else float("nan"),
               "final_checkpoint": None, "best_checkpoint": None, "checkpoint": None}
    if stopped:
        return _with_checksum(summary, params)

    if info.main:
        if not final_inv_path.is_file() or steps_run:
            save_inverter_file(final_inv_path)
        summary["final_checkpoint"] = str(final_inv_path)
        summary["best_checkpoint"] = str(best_inv_path) if best_inv_path.is_file() else None
        summary["checkpoint"] = summary["best_checkpoint"] or summary["final_checkpoint"]
        T.set_tags(client, run_id, {"final_checkpoint": str(final_inv_path.resolve()),
                                    "best_checkpoint": str(best_inv_path.resolve()) if best_inv_path.is_file() else "-",
                                    "best_step": state.best_step,
                                    "train_seconds": f"{time.perf_counter() - t_start:.1f}"})
        if own_run:
            client.set_terminated(run_id, "FINISHED")
    return _with_checksum(D.broadcast_object(summary, info.world), params)


def _with_checksum(summary: dict, params) -> dict:
    """Adds this process's checksum of the trainable weights (DDP ranks must agree)."""
    with torch.no_grad():
        return {**summary, "param_checksum": float(sum(p.double().sum() for p in params))}


def _load_edits(cfg, generator) -> list[tuple[str, float, torch.Tensor]]:
    """``(name, strength, per-row offset [1, n_latent, D])`` for each ``image_edits`` entry; a missing
    direction file or one that does not fit the generator's W+ shape is an error at start-up."""
    from e4e.editing import direction_offset, load_direction

    edits = []
    for name, strength in C.parse_edits(cfg.image_edits):
        direction = load_direction(cfg.data.domain, name)
        try:
            offset = direction_offset(direction, generator.n_latent, generator.style_dim)
        except ValueError as e:
            raise C.ConfigError(f"image_edits: direction {name!r} of domain {cfg.data.domain!r} does not fit "
                                f"this generator: {e}") from None
        edits.append((name, strength, offset))
    return edits


def _log_grid(client, run_id, inverter, x, out_dir: Path, step: int, edits=()) -> None:
    """Image artifact ``images/step_N.png``: input | inversion | each configured edit (rows)."""
    from e4e.editing import apply_edit

    if x is None or client is None:
        return
    was_training = inverter.training
    inverter.eval()
    with torch.no_grad():
        codes = _inference(inverter, x)
        y_hat = inverter.generate(codes, noise_mode="const")
        edited = [inverter.generate(apply_edit(codes, offset, strength), noise_mode="const").cpu()
                  for _, strength, offset in edits]
    inverter.train(was_training)
    path = _save_grid(out_dir / "images" / f"step_{step:07d}.png", x.cpu(), y_hat.cpu(), *edited)
    client.log_artifact(run_id, str(path), "images")


def _validate(inverter, recon, val_set, cfg, device) -> dict[str, float]:
    was_training = inverter.training
    inverter.eval()
    n = min(len(val_set), cfg.data.val_max_images)
    sums: dict[str, float] = {}
    with torch.no_grad():
        for i in range(0, n, cfg.batch_size):
            x = _fetch(val_set, list(range(i, min(n, i + cfg.batch_size)))).to(device)
            y_hat = inverter.generate(_inference(inverter, x), noise_mode="const")
            loss, logs = recon(y_hat, x)
            logs["loss"] = float(loss.detach())
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + v * x.shape[0]
    inverter.train(was_training)
    return {k: v / n for k, v in sums.items()}
