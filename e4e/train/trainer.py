"""The trainer: ``train(cfg)`` takes the run directory's lock and drives a ``Trainer`` (build, resume,
open the MLflow run, fit). Steps, validation and checkpoints are short methods of ``Trainer``.
"""
from __future__ import annotations

import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from e4e import checkpoints as CK
from e4e import config as C
from e4e import dist as D
from e4e.cli import resolve_device
from e4e.dist import DistInfo
from e4e import losses as L
from e4e import tracking as T
from e4e.optim import build_optimizer

from e4e.train.state import (CKPT_FORMAT, _State, _atomic_save, _orphan_run, _trainable_state, _write_run_file,
                             load_training_checkpoint)
from e4e.train.build import (_CodesForward, _build_inverter, _identity_kind, _load_edits, _load_generator,
                             default_out_dir, domain_info, progressive_schedule, progressive_stage, set_stage,
                             supports_progressive)
from e4e.train.data import BatchStream, ShardedOrder, _build_datasets, _fetch, _flip
from e4e.train.steps import (NonFiniteError, STEP_FNS, _Ctx, _disc_step, _inference, _pool_load, _pool_state,
                             non_finite_terms)


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
    final_checkpoint, best_checkpoint, last_checkpoint, checkpoint_uri (``runs:/<run_id>/<file>``: the
    checkpoint logged as an artifact), final_losses, best_val, best_step, out_dir, config_hash, stopped.
    """
    if cfg.model.method not in STEP_FNS:
        raise C.ConfigError(f"model.method {cfg.model.method!r} is not a trained method; trained: {sorted(STEP_FNS)}"
                            " (optimisation methods run in baselines.optim / experiments.invert)")
    device = resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
    T.check_store(tracking_uri or T.tracking_uri())  # a store that cannot be used stops here, before any write
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
        trainer = Trainer(cfg, info, device, generator=generator, train_set=train_set, val_set=val_set,
                          perceptual=perceptual, identity=identity)
        trainer.resume()
        trainer.open_run(run_id, tracking_uri)
        return trainer.fit(stop_after)
    finally:
        lock.release()
        D.cleanup(info)


class Trainer:
    """One training run of one encoder method. ``__init__`` builds everything a step needs (a missing
    file or a bad config stops there, before any step); ``resume`` restores ``last.pt``;
    ``open_run`` opens, adopts or resumes the MLflow run; ``fit`` runs the steps and returns the
    summary. Each step is ``step`` (forward, backward, latent D, optimiser) and then the periodic
    work: ``log``, ``validate``, ``checkpoint``."""

    def __init__(self, cfg: C.TrainConfig, info: DistInfo, device, generator=None, train_set=None, val_set=None,
                 perceptual=None, identity=None):
        self.t_start = time.perf_counter()
        self.cfg, self.info, self.device = cfg, info, device
        self.chash = C.config_hash(cfg)
        self.out_dir = out_dir = Path(cfg.out_dir) if cfg.out_dir else default_out_dir(cfg)
        self.last_path, self.best_path = out_dir / "last.pt", out_dir / "best.pt"
        self.final_inv_path, self.best_inv_path = out_dir / "inverter.pt", out_dir / "best_inverter.pt"

        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        dom = domain_info(cfg.data.domain)
        self._build_models(generator, train_set, dom)
        self._build_losses(dom, perceptual, identity)
        self._build_data(train_set, val_set)
        self._build_step()
        self.state = _State()
        self.pending: list = []
        self.client, self.run_id, self.own_run = None, None, False
        self.buffer = T.MetricBuffer()

    # -- construction ----------------------------------------------------------------------------
    def _build_models(self, generator, train_set, dom) -> None:
        cfg, device = self.cfg, self.device
        generator = _load_generator(cfg, generator).to(device).eval().requires_grad_(False)
        latent_avg = getattr(generator, "latent_avg", None)
        if latent_avg is None:
            latent_avg = generator.mean_latent(10_000, seed=cfg.seed)
        if latent_avg.ndim == 1:
            latent_avg = latent_avg.unsqueeze(0)
        self.input_size = cfg.data.image_size or (tuple(dom.enc_input) if train_set is None else None) or \
            min(256, generator.size)
        inverter = _build_inverter(cfg, generator, latent_avg.to(device), self.input_size).to(device)
        inverter.decoder.requires_grad_(False)
        self.n_latent = generator.n_latent
        self.progressive = cfg.progressive.enabled
        if self.progressive and not supports_progressive(inverter):
            raise C.ConfigError(f"method {cfg.model.method!r} has no progressive stages; set progressive.enabled=false")
        if supports_progressive(inverter) and not self.progressive:
            set_stage(inverter, self.n_latent - 1)
        self.prog_start, self.prog_interval = progressive_schedule(cfg)
        self.params = [p for n, p in inverter.named_parameters() if p.requires_grad and not n.startswith("decoder.")]
        self.optimizer = build_optimizer(cfg.optim.name, self.params, cfg.optim.lr, cfg.optim.weight_decay)
        self.generator, self.inverter = generator, inverter

        # latent discriminator
        self.disc = self.d_opt = self.pools = None
        if cfg.adversarial.enabled and cfg.adversarial.weight > 0:
            from e4e.models.latent_disc import LatentCodesDiscriminator, LatentCodesPool

            self.disc = LatentCodesDiscriminator(generator.style_dim, 4).to(device).requires_grad_(False)
            self.d_opt = torch.optim.Adam(self.disc.parameters(), lr=cfg.adversarial.d_lr)
            if cfg.adversarial.pool_size > 0:
                self.pools = (LatentCodesPool(cfg.adversarial.pool_size), LatentCodesPool(cfg.adversarial.pool_size))

    def _build_losses(self, dom, perceptual, identity) -> None:
        """A missing pretrained file or direction stops here, before any step."""
        cfg = self.cfg
        self.id_kind = _identity_kind(cfg, dom) if cfg.loss.id_lambda > 0 and identity is None else ""
        self.recon = L.ReconstructionLoss.from_config(cfg.loss, self.id_kind, self.device, perceptual=perceptual,
                                                      identity=identity).to(self.device)
        self.vis_edits = _load_edits(cfg, self.generator) if self.info.main else []

    def _build_data(self, train_set, val_set) -> None:
        cfg, info = self.cfg, self.info
        if train_set is None:
            train_set, auto_val = _build_datasets(cfg, self.input_size)
            val_set = val_set if val_set is not None else auto_val
        self.train_set, self.val_set = train_set, val_set
        needed = cfg.batch_size * info.world
        if len(train_set) < needed:
            raise C.ConfigError(f"batch_size={cfg.batch_size} x {info.world} process(es) needs {needed} training "
                                f"images, the training set has {len(train_set)}: lower batch_size or add images")
        self.order = ShardedOrder(len(train_set), cfg.batch_size, cfg.seed, info.rank, info.world)
        self.stream = BatchStream(train_set, self.order, cfg.data.num_workers)

    def _build_step(self) -> None:
        cfg, info, device, inverter = self.cfg, self.info, self.device, self.inverter
        model: nn.Module = _CodesForward(inverter)
        if info.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
                        find_unused_parameters=True)
        avg_image = None
        if cfg.model.method.startswith("restyle_"):
            with torch.no_grad():
                avg_image = L.match_size(inverter.generate(inverter.latent_avg.unsqueeze(0), noise_mode="const"),
                                         _fetch(self.train_set, [0]).shape[-2:]).to(device)
        synthesis = torch.compile(inverter.generate) if cfg.compile else None
        self.ctx = _Ctx(cfg, inverter, model, self.recon, self.disc, self.n_latent, avg_image, synthesis)
        self.step_fn = STEP_FNS[cfg.model.method]

    # -- resume / MLflow ---------------------------------------------------------------------------
    def resume(self) -> None:
        """Restore ``last.pt`` when there is one (same config only); else seed the per-rank streams."""
        info = self.info
        if not self.last_path.exists():
            torch.manual_seed(self.cfg.seed + 1_000_003 * info.rank)  # per-rank noise / z streams
            return
        ck = load_training_checkpoint(self.last_path)
        if ck["config_hash"] != self.chash:
            raise C.ConfigError(f"{self.last_path} was written by a different configuration "
                                f"(config_hash {ck['config_hash'][:10]} != {self.chash[:10]}); use another out_dir")
        try:
            self._restore(ck)
        except (ValueError, RuntimeError, KeyError, IndexError, TypeError) as e:
            raise CK.CheckpointError(f"{self.last_path}: does not fit this run ({type(e).__name__}: "
                                     f"{str(e)[:300]}); use another out_dir") from None
        self.state = _State(ck["step"], ck["best_val"], ck["best_step"], ck["run_id"], ck.get("own_run", False),
                            ck.get("last_logs", {}))
        self.pending = ck.get("pending_metrics", [])
        CK.set_rng_state(ck["rng"][info.rank])

    def _restore(self, ck: dict) -> None:
        """The inverter, optimisers, latent D, pools and data order of a training checkpoint."""
        info = self.info
        missing, unexpected = self.inverter.load_state_dict(ck["inverter"], strict=False)
        bad = [k for k in missing if not k.startswith("decoder.")] + list(unexpected)
        if bad:
            raise ValueError(f"inverter state does not match the model: {bad[:8]}")
        self.optimizer.load_state_dict(ck["optimizer"])
        if self.disc is not None:
            self.disc.load_state_dict(ck["disc"])
            self.d_opt.load_state_dict(ck["disc_opt"])
            if self.pools is not None:
                per_rank = ck["pools"]
                _pool_load(self.pools[0], per_rank[info.rank][0])
                _pool_load(self.pools[1], per_rank[info.rank][1])
        self.order.load_state_dict(ck["data_order"])

    def open_run(self, run_id: str | None, tracking_uri: str | None) -> None:
        """Rank 0: the run handed in (a grid member), else the one ``last.pt`` records, else the orphan
        ``run.json`` records (killed before the first checkpoint), else a new one; tags, params, the
        config artifact and the checkpoint's unflushed rows. Every rank learns the run id."""
        cfg, info, state = self.cfg, self.info, self.state
        run_id = run_id or state.run_id
        own_run = False
        if info.main:
            out_dir = self.out_dir
            out_dir.mkdir(parents=True, exist_ok=True)
            C.save_yaml(cfg, out_dir / "config.yaml")
            client = self.client = T.get_client(tracking_uri)
            tags = {**T.system_tags(self.device), "method": cfg.model.method, "config_hash": self.chash,
                    "out_dir": str(out_dir.resolve()), "world_size": info.world,
                    "loss.identity": self.id_kind or "-",
                    "loss.perceptual": cfg.loss.lpips_net if cfg.loss.lpips_lambda else "-",
                    "steps": cfg.max_steps, "seed": cfg.seed}
            if run_id is None:
                run_id = _orphan_run(client, out_dir, self.chash)   # killed before its first checkpoint: adopt it
                own_run = run_id is not None
                if run_id is None:
                    exp_id = T.get_or_create_experiment(client, cfg.experiment or cfg.data.domain)
                    run = client.create_run(exp_id, run_name=cfg.run_name or f"{cfg.model.method}-{self.chash[:8]}")
                    run_id, own_run = run.info.run_id, True
                    _write_run_file(out_dir, run_id, self.chash)
                client.update_run(run_id, status="RUNNING")
            else:
                # a run this trainer created (recorded in the checkpoint) vs one handed in (a grid member)
                own_run = bool(state.run_id) and run_id == state.run_id and state.own_run
                client.update_run(run_id, status="RUNNING")
            have = client.get_run(run_id).data.tags   # a run handed in keeps the source its creator gave it
            T.set_tags(client, run_id, {k: v for k, v in tags.items() if not (k in T.CREATOR_TAGS and k in have)})
            existing = client.get_run(run_id).data.params
            T.log_params(client, run_id,
                         {k: v for k, v in T.flatten_params(C.to_dict(cfg)).items() if k not in existing})
            if state.step == 0 and not self.last_path.is_file():
                client.log_artifact(run_id, str(out_dir / "config.yaml"))
            if self.pending:  # rows saved with the checkpoint but possibly not flushed before the kill
                T.flush_pending(client, run_id, self.pending)
            # steps flushed after the checkpoint this run resumes from (between checkpoints) are in the
            # store: the replayed steps up to there are not logged again
            self.buffer.floor = T.logged_steps(client, run_id)
            self._log_datasets(client, run_id)
        self.run_id, self.own_run = D.broadcast_object(run_id, info.world), own_run

    def _log_datasets(self, client, run_id: str) -> None:
        """The training / validation image folders as the run's dataset inputs (in-memory sets: none).
        MLflow holds a data set once per run: validation held out of the training folder is the
        training input's tag ``n_validation``."""
        train_dir, val_dir = T.dataset_folder(self.train_set), T.dataset_folder(self.val_set)
        n_val = len(self.val_set) if self.val_set is not None else 0
        if train_dir is not None:
            tags = {"n_images": len(self.train_set)}
            if n_val and val_dir is not None and val_dir.resolve() == train_dir.resolve():
                tags["n_validation"] = n_val
            T.log_dataset(client, run_id, train_dir, "training", tags=tags)
        if n_val and val_dir is not None and (train_dir is None or val_dir.resolve() != train_dir.resolve()):
            T.log_dataset(client, run_id, val_dir, "validation", tags={"n_images": n_val})

    # -- checkpoints -------------------------------------------------------------------------------
    def checkpoint(self, path: Path, step: int) -> None:
        """Everything a resume needs (rank 0 writes it; every rank contributes its RNG and pools)."""
        info, pools = self.info, self.pools
        rng_all = D.gather_object(CK.rng_state(), info.world)
        pools_all = D.gather_object((_pool_state(pools[0]), _pool_state(pools[1])) if pools else (None, None),
                                    info.world)
        if not info.main:
            return
        cfg, state, disc, d_opt = self.cfg, self.state, self.disc, self.d_opt
        ck = {"format": CKPT_FORMAT, "version": 1, "step": step, "method": cfg.model.method,
              "config": C.to_dict(cfg), "config_hash": self.chash, "inverter": _trainable_state(self.inverter),
              "optimizer": self.optimizer.state_dict(), "disc": disc.state_dict() if disc is not None else None,
              "disc_opt": d_opt.state_dict() if d_opt is not None else None, "pools": pools_all,
              "rng": rng_all, "data_order": self.order.state_dict(), "run_id": self.run_id, "own_run": self.own_run,
              "best_val": state.best_val, "best_step": state.best_step, "last_logs": state.last_logs,
              "pending_metrics": list(self.buffer.rows), "n_latent": self.n_latent,
              "generator": cfg.model.generator, "world_size": info.world}
        _atomic_save(ck, path)

    def save_inverter_file(self, path: Path) -> Path:
        from e4e.checkpoints import save_inverter

        save_inverter(self.inverter, path, config=C.to_dict(self.cfg))
        return path

    # -- one step ----------------------------------------------------------------------------------
    def step(self) -> dict[str, float]:
        """Step ``state.step`` -> ``state.step + 1``: progressive stage, batch, forward/backward, the
        non-finite check (before the optimiser or any checkpoint sees it), latent D, optimiser."""
        cfg, info, ctx, state = self.cfg, self.info, self.ctx, self.state
        s = state.step
        stage = progressive_stage(s, self.n_latent, self.prog_start, self.prog_interval) if self.progressive \
            else self.n_latent - 1
        if self.progressive:
            set_stage(self.inverter, stage)
        ctx.n_active = stage + 1
        x = self.stream.next()
        if cfg.data.hflip:
            x = _flip(x, cfg.seed, s, info.rank)
        x = x.to(self.device, non_blocking=True)

        self.optimizer.zero_grad(set_to_none=True)
        logs, fakes = self.step_fn(ctx, x)
        bad = non_finite_terms(logs, self.params)
        if bad:
            self.fail(f"non-finite training values at step {s + 1}: {bad}")
        if self.disc is not None:
            logs.update(_disc_step(cfg, self.disc, self.d_opt, self.pools, self.generator, fakes, s, info,
                                   cfg.batch_size))
        self.optimizer.step()
        state.step = s + 1
        logs["progressive_stage"] = stage
        state.last_logs = logs
        return logs

    def fail(self, msg: str) -> None:
        """Stop the run with ``NonFiniteError``: the rows so far are sent, the run says why."""
        client, run_id = self.client, self.run_id
        if self.info.main and client is not None:
            self.buffer.flush(client, run_id)
            client.set_tag(run_id, "error", msg[:4000])
            if self.own_run:
                client.set_terminated(run_id, "FAILED")
        raise NonFiniteError(msg)

    def validate(self) -> None:
        """Validation loss on the held-out split; a new best writes ``best.pt`` and ``best_inverter.pt``."""
        info, state = self.info, self.state
        improved = False
        if info.main and self.val_set is not None and len(self.val_set):
            vlogs = _validate(self.inverter, self.recon, self.val_set, self.cfg, self.device)
            self.buffer.add_dict({f"val/{k}": v for k, v in vlogs.items()}, state.step)
            if vlogs["loss"] < state.best_val:
                improved = True
                state.best_val, state.best_step = vlogs["loss"], state.step
                self.buffer.add("val/best_loss", state.best_val, state.step)
        improved = D.broadcast_object(improved, info.world)
        if improved:
            state.best_val, state.best_step = D.broadcast_object((state.best_val, state.best_step), info.world)
            self.checkpoint(self.best_path, state.step)
            if info.main:
                self.save_inverter_file(self.best_inv_path)

    # -- the loop ------------------------------------------------------------------------------------
    def fit(self, stop_after: int | None = None) -> dict:
        cfg, info, state = self.cfg, self.info, self.state
        fixed_vis = None
        vis_source = self.val_set if self.val_set is not None and len(self.val_set) else self.train_set
        if info.main:
            fixed_vis = _fetch(vis_source, list(range(min(4, len(vis_source))))).to(self.device)
        bar = None
        if info.main and cfg.progress:
            from e4e.progress import Progress

            bar = Progress(cfg.max_steps, f"train {cfg.model.method}", unit="step", initial=state.step)
        self.inverter.train()
        stopped = False
        t_loop = time.perf_counter()
        steps_run = 0
        step_times: list[float] = []
        self.buffer.flushed_at = time.monotonic()   # the flush clock starts with the steps
        while state.step < cfg.max_steps:
            t_step = time.perf_counter()
            logs = self.step()
            step_times.append(time.perf_counter() - t_step)
            steps_run += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{logs['loss']:.4f}", stage=logs["progressive_stage"])
            last = state.step == cfg.max_steps
            if info.main and (state.step % cfg.log_every == 0 or last):
                self.buffer.add_dict({f"train/{k}": v for k, v in logs.items()}, state.step)
            if info.main and (state.step % cfg.image_every == 0 or last):
                _log_grid(self.client, self.run_id, self.inverter, fixed_vis, self.out_dir, state.step, self.vis_edits)
            if state.step % cfg.val_every == 0 or last:
                self.validate()
            if stop_after is not None and steps_run >= stop_after and not last:
                stopped = True
                break
            if state.step % cfg.ckpt_every == 0 or last:
                self.checkpoint(self.last_path, state.step)
                if info.main:
                    self.buffer.flush(self.client, self.run_id)
            elif info.main and self.flush_due():
                self.buffer.flush(self.client, self.run_id)
        self.stream.close()
        if bar is not None:
            bar.close()
        step_time = (time.perf_counter() - t_loop) / max(1, steps_run)
        median_step = float(np.median(step_times)) if step_times else float("nan")
        summary = {"run_id": self.run_id, "step": state.step, "out_dir": str(self.out_dir), "config_hash": self.chash,
                   "final_losses": dict(state.last_logs), "best_val": state.best_val, "best_step": state.best_step,
                   "last_checkpoint": str(self.last_path), "stopped": stopped, "sec_per_step": step_time,
                   "sec_per_step_median": median_step,
                   "sec_first_step": step_times[0] if step_times else float("nan"),
                   "final_checkpoint": None, "best_checkpoint": None, "checkpoint": None, "checkpoint_uri": None}
        if stopped:
            return _with_checksum(summary, self.params)
        return self.finish(summary, steps_run)

    def flush_due(self) -> bool:
        """Between checkpoints, at a logged step: every ``flush_every`` x ``log_every`` steps, or when the
        last flush is ``flush_seconds`` old. A kill before the next checkpoint replays the steps after the
        last one; their rows already flushed are not logged again (``MetricBuffer.floor``)."""
        cfg, step = self.cfg, self.state.step
        if not self.buffer.rows or step % cfg.log_every:
            return False
        if cfg.flush_every and step % (cfg.log_every * cfg.flush_every) == 0:
            return True
        return bool(cfg.flush_seconds) and self.buffer.seconds_since_flush() >= cfg.flush_seconds

    def log_checkpoints(self, steps_run: int) -> dict[str, str]:
        """``inverter.pt`` and ``best_inverter.pt`` (and ``last.pt`` with ``log_last_checkpoint``) as
        artifacts at the run's root, so ``runs:/<run_id>/best_inverter.pt`` loads anywhere the store is
        reachable. A finished run opened again (no step run) does not send a file the run holds at that
        size again. Returns file name -> ``runs:/`` URI."""
        client, run_id = self.client, self.run_id
        files = [self.final_inv_path, self.best_inv_path] + ([self.last_path] if self.cfg.log_last_checkpoint else [])
        have = {f.path: f.file_size for f in client.list_artifacts(run_id) if not f.is_dir} if not steps_run else {}
        out = {}
        for f in files:
            if f.is_file():
                if have.get(f.name) != f.stat().st_size:
                    client.log_artifact(run_id, str(f))
                out[f.name] = T.run_artifact_uri(run_id, f.name)
        return out

    def finish(self, summary: dict, steps_run: int) -> dict:
        """The final inverter file, the checkpoint tags, the run FINISHED (when this trainer opened it)."""
        info, client, run_id, state = self.info, self.client, self.run_id, self.state
        if info.main:
            if not self.final_inv_path.is_file() or steps_run:
                self.save_inverter_file(self.final_inv_path)
            best = self.best_inv_path
            summary["final_checkpoint"] = str(self.final_inv_path)
            summary["best_checkpoint"] = str(best) if best.is_file() else None
            summary["checkpoint"] = summary["best_checkpoint"] or summary["final_checkpoint"]
            uris = self.log_checkpoints(steps_run)
            summary["checkpoint_uri"] = uris.get(Path(summary["checkpoint"]).name)
            T.set_tags(client, run_id, {"final_checkpoint": str(self.final_inv_path.resolve()),
                                        "best_checkpoint": str(best.resolve()) if best.is_file() else "-",
                                        "checkpoint.uri": summary["checkpoint_uri"] or "-",
                                        "best_step": state.best_step,
                                        "train_seconds": f"{time.perf_counter() - self.t_start:.1f}"})
            if self.own_run:
                client.set_terminated(run_id, "FINISHED")
        return _with_checksum(D.broadcast_object(summary, info.world), self.params)


def _with_checksum(summary: dict, params) -> dict:
    """Adds this process's checksum of the trainable weights (DDP ranks must agree)."""
    with torch.no_grad():
        return {**summary, "param_checksum": float(sum(p.double().sum() for p in params))}


def _save_grid(path: Path, x: torch.Tensor, y_hat: torch.Tensor, *edited: torch.Tensor) -> Path:
    """One row each: inputs, inversions, then one row per edit of the inversions."""
    from torchvision.utils import save_image

    rows = torch.cat([x] + [L.match_size(y, x.shape[-2:]) for y in (y_hat, *edited)]).clamp(-1, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(rows, path, nrow=x.shape[0], normalize=True, value_range=(-1, 1))
    return path


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
