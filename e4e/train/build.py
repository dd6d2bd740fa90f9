"""What a training run is built from: the domain, the generator (default per domain, checked against the
domain's size and W+ rows), the inverter (method table, pretrained trunk, init checkpoint), the
progressive schedule and stages, the training-grid edits.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from e4e import checkpoints as CK
from e4e import config as C
from e4e.inverters import TRAINED_METHODS, load_inverters


ENCODER_METHODS = TRAINED_METHODS


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


def default_out_dir(cfg: C.TrainConfig) -> Path:
    return Path("runs") / cfg.data.domain / f"{cfg.model.method}-{C.config_hash(cfg, 10)}"


def _build_inverter(cfg: C.TrainConfig, generator, latent_avg, input_size):
    from e4e.inverters import get_inverter

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


SYNTH_GENERATOR = Path(__file__).resolve().parents[1] / "synth" / "assets" / "generator_synth64.pt"


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
        packaged = Path(__file__).resolve().parents[2] / path
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
