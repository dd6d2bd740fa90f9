"""ONE trainer for every encoder method (docs/design.md §1, §5, §6).

Methods: ``e4e`` (Encoder4Editing), ``psp`` (GradualStyleEncoder, W+), ``w_encoder`` (one W code
repeated), ``restyle_e4e`` / ``restyle_psp`` (N refinement iterations per batch, each iteration's
loss back-propagated, one optimizer step per batch: official ReStyle). The inverter is built by name
from the registry (``e4e.inverters``); the generator is frozen.

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

Modules: ``trainer`` (``train``, the ``Trainer`` whose steps are short methods), ``build`` (generator,
inverter, trunk, progressive schedule), ``data`` (resumable sharded order, batch stream, folders),
``steps`` (one step per method, latent D), ``state`` (checkpoint format, ``run.json``).
"""
from e4e.train.build import (DEFAULT_GENERATORS, ENCODER_METHODS, SYNTH_GENERATOR, SYNTH_TRUNK, _build_inverter,
                             _CodesForward, default_generator_path, default_out_dir, domain_info, progressive_schedule,
                             progressive_stage, set_stage, supports_progressive)
from e4e.train.data import BatchStream, ShardedOrder, default_data_dirs
from e4e.train.state import CKPT_FORMAT, RUN_FILE, load_training_checkpoint
from e4e.train.steps import STEP_FNS, NonFiniteError, non_finite_terms
from e4e.train.trainer import Trainer, train

__all__ = ["train", "Trainer", "ENCODER_METHODS", "STEP_FNS", "NonFiniteError", "non_finite_terms",
           "load_training_checkpoint", "CKPT_FORMAT", "RUN_FILE", "SYNTH_GENERATOR", "SYNTH_TRUNK",
           "DEFAULT_GENERATORS", "default_generator_path", "default_out_dir", "default_data_dirs", "domain_info",
           "progressive_schedule", "progressive_stage", "set_stage", "supports_progressive", "ShardedOrder",
           "BatchStream", "_build_inverter", "_CodesForward"]
