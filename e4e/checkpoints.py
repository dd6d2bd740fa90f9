"""Loaders for every checkpoint format the e4e pipeline meets (docs/design.md §2-3), all read with
``torch.load(weights_only=True)``:

* rosinality StyleGAN2 files (``{'g_ema', 'latent_avg'?}``, e.g. stylegan2-ffhq-config-f.pt) and
  rosinality training checkpoints (``g``, ``d``, ``g_ema``, optimisers, ``args`` = a pickled
  ``argparse.Namespace``, read through an allow-list). Size, style_dim, n_mlp and the channel
  table are inferred from the tensors; ``load_state_dict(strict=True)``.
* official e4e / pSp / ReStyle encoder files (``state_dict`` with ``encoder.``/``decoder.``
  prefixes, ``opts`` in any of the three schemas, ``latent_avg``): the method comes from the keys
  (+ ``opts.encoder_type`` to tell e4e from pSp), the architecture and the number of W+ rows from
  the tensors, never from ``opts``.
* this project's inverter files (``save_inverter``), format ``e4e-lab-inverter``::

    {'format': 'e4e-lab-inverter', 'version': 1, 'method': 'e4e' | 'psp' | ...,
     'encoder_kwargs': {...},    # EncoderBase.config(): rebuilds the encoder architecture
     'inverter_kwargs': {...},   # input_size, n_iters (ReStyle)
     'progressive_stage': int | 'inference' | None,
     'generator_config': {...},  # Generator.config() (informative; rebuilt from the tensors)
     'encoder': state_dict, 'decoder': state_dict (rosinality keys), 'latent_avg': [n_latent, D],
     'config': dict | None, 'extra': dict | None}   # plain containers only

* this project's encoder-trunk files (``save_trunk``, e.g. the synth domain's pretrained trunk),
  format ``e4e-lab-trunk``: ``{'format', 'version': 1, 'arch': {'backbone', 'width', 'units',
  'input_nc', 'input_size'}, 'state_dict': the stem (``input_layer``) and ``body`` tensors,
  'extra': dict | None}``; ``init_encoder_from_trunk`` copies one into an encoder of the same
  architecture.

Any other file gets one clear error: missing (FileNotFoundError / WeightsMissingError), not a
PyTorch file or truncated (ValueError "not a PyTorch checkpoint"), or the wrong kind ("this is a
... checkpoint, use ...").
"""
from __future__ import annotations

import argparse
import os
import pickle
import random
import re
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from e4e import weights
from e4e.inverters import Inverter, get_inverter
from e4e.inverters import FAMILIES, METHODS, load_inverters
from e4e.models.stylegan2 import Generator, default_channels

INVERTER_FORMAT = "e4e-lab-inverter"
TRAIN_FORMAT = "e4e-lab-train"
TRUNK_FORMAT = "e4e-lab-trunk"
SAFE_GLOBALS = (argparse.Namespace,)

# ---------------------------------------------------------------------------------------------
# reading files
# ---------------------------------------------------------------------------------------------


def resolve_path(path) -> Path:
    """An existing file, a key of the weights registry (``e4e.weights``) resolved on disk, or an MLflow
    artifact URI (``runs:/<run_id>/inverter.pt``, ``mlflow-artifacts:/...``) downloaded into the cache
    (``e4e.tracking.fetch_artifact``, in ``$MLFLOW_TRACKING_URI``'s store); loaded like any file."""
    from e4e.tracking import fetch_artifact, is_artifact_uri

    if is_artifact_uri(path):
        return fetch_artifact(path)
    p = Path(path)
    if p.is_file():
        return p
    if isinstance(path, str) and path in weights.REGISTRY:
        return weights.require(path)
    raise FileNotFoundError(f"checkpoint file not found: {p.resolve() if not p.is_absolute() else p}")


class CheckpointError(ValueError):
    """A file that is not the checkpoint it should be (not torch, truncated, pickles code, wrong
    kind or architecture); the message names the file."""


def _looks_like_torch_file(p: Path) -> bool:
    with open(p, "rb") as f:
        head = f.read(4)
    return head == b"PK\x03\x04" or head[:1] == b"\x80"  # zip (torch>=1.6) or legacy pickle


def load_checkpoint(path, allow_pickle: bool = False, map_location="cpu") -> Any:
    """``torch.load(weights_only=True)``; a pickled ``argparse.Namespace`` (rosinality ``args``) is
    allowed through ``torch.serialization.safe_globals``. Other Python objects need
    ``allow_pickle=True`` (only for files you trust)."""
    p = resolve_path(path)
    if not _looks_like_torch_file(p):
        raise CheckpointError(f"{p}: not a PyTorch checkpoint (neither a torch zip archive nor a pickle)")
    try:
        try:
            return torch.load(p, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as e:
            unsafe = _unsafe_globals(p, e)
            if not unsafe:  # not a disallowed-global failure: a broken pickle stream
                raise
            allowed = {f"{g.__module__}.{g.__qualname__}" for g in SAFE_GLOBALS}
            if unsafe and unsafe <= allowed:
                with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
                    return torch.load(p, map_location=map_location, weights_only=True)
            if allow_pickle:
                return torch.load(p, map_location=map_location, weights_only=False)
            raise CheckpointError(f"{p}: the checkpoint pickles Python objects {sorted(unsafe) or '(unknown)'}; "
                                  "nothing in it was executed. Load it only if you trust the file: --allow-pickle "
                                  "of experiments.evaluate / experiments.invert (allow_pickle=True)") from None
    except pickle.UnpicklingError as e:
        reason = re.search(r"WeightsUnpickler error:\s*(.+?)\n", str(e) + "\n", re.S)
        raise CheckpointError(f"{p}: refused by the safe loader (weights_only=True: "
                              f"{reason.group(1).strip()[:120] if reason else 'not plain tensors'}): it pickles Python "
                              "objects or is not a PyTorch checkpoint; nothing in it was executed") from None
    except (RuntimeError, OSError, EOFError, zipfile.BadZipFile, KeyError) as e:
        first = (str(e).splitlines() or [""])[0][:160]
        raise CheckpointError(f"{p}: not a PyTorch checkpoint, or a truncated/corrupt one "
                         f"({type(e).__name__}: {first})") from None


def _unsafe_globals(p: Path, err: Exception) -> set[str]:
    try:
        return set(torch.serialization.get_unsafe_globals_in_checkpoint(p))
    except Exception:  # legacy (non-zip) files: read the names from the message
        return set(re.findall(r"GLOBAL ([\w.]+)", str(err)))


# ---------------------------------------------------------------------------------------------
# checkpoint kinds and wrong-kind errors
# ---------------------------------------------------------------------------------------------
def _is_mapping(obj) -> bool:
    return isinstance(obj, dict)


KINDS: list[tuple[str, Callable[[dict], bool]]] = [
    (INVERTER_FORMAT, lambda o: o.get("format") == INVERTER_FORMAT),
    (TRAIN_FORMAT, lambda o: o.get("format") == TRAIN_FORMAT),
    (TRUNK_FORMAT, lambda o: o.get("format") == TRUNK_FORMAT),
    ("official_inverter", lambda o: _is_mapping(o.get("state_dict"))
     and any(str(k).startswith("encoder.") for k in o["state_dict"])),
    ("generator", lambda o: "g_ema" in o or ("style.1.weight" in o and "input.input" in o)),
    ("arcface", lambda o: "input_layer.0.weight" in o and "output_layer.3.weight" in o),
]
KIND_HELP = {
    INVERTER_FORMAT: "an e4e-lab inverter checkpoint, use e4e.checkpoints.load_inverter",
    "official_inverter": "an encoder (e4e / pSp / ReStyle) checkpoint, use e4e.checkpoints.load_inverter",
    TRAIN_FORMAT: "an e4e-lab training (resume) checkpoint; use load_inverter on the inverter.pt / "
                  "best_inverter.pt written next to it",
    TRUNK_FORMAT: "an e4e-lab encoder trunk, use the config key model.trunk_init "
                  "(e4e.checkpoints.init_encoder_from_trunk)",
    "generator": "a StyleGAN2 generator checkpoint, use e4e.checkpoints.load_generator",
    "arcface": "an IR-SE-50 ArcFace checkpoint (model_ir_se50.pth), use e4e.identity / "
               "e4e.models.backbones.Backbone",
}


def checkpoint_kind(obj) -> str:
    if not _is_mapping(obj):
        return "unknown"
    return next((name for name, test in KINDS if test(obj)), "unknown")


def _wrong_kind(path, kind: str, wanted: str, obj) -> CheckpointError:
    if kind == "unknown":
        keys = sorted(map(str, obj))[:8] if _is_mapping(obj) else type(obj).__name__
        return CheckpointError(f"{path}: not a {wanted} checkpoint this harness knows (top-level keys: {keys})")
    return CheckpointError(f"{path}: this is {KIND_HELP[kind]} (not a {wanted} checkpoint)")


def require_keys(obj: dict, keys, path, what: str) -> None:
    """A ``CheckpointError`` naming the file and the keys missing from a checkpoint of kind ``what``."""
    missing = [k for k in keys if k not in obj]
    if missing:
        raise CheckpointError(f"{path}: this {what} checkpoint lacks {missing} (incomplete or from another tool)")


def check_finite(tensors: dict, path) -> None:
    """A ``CheckpointError`` naming the first tensors with NaN or inf values (a diverged or damaged file)."""
    bad = [k for k, v in tensors.items() if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} tensor(s) hold NaN or inf values, e.g. {bad[:3]} (a diverged or "
                              "damaged checkpoint)")


# ---------------------------------------------------------------------------------------------
# building modules from state dicts
# ---------------------------------------------------------------------------------------------
def materialize(factory: Callable[[], nn.Module], state_dict: dict, what: str = "model") -> nn.Module:
    """Construct on the meta device (no random init) and assign ``state_dict`` with strict keys."""
    with torch.device("meta"):
        module = factory()
    sd = {k: (v.float() if torch.is_floating_point(v) else v) for k, v in state_dict.items()}
    try:
        module.load_state_dict(sd, strict=True, assign=True)
    except RuntimeError as e:
        raise CheckpointError(f"{what}: state dict does not match the architecture inferred from it:\n{e}") from None
    left = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if left:
        raise CheckpointError(f"{what}: tensors missing from the checkpoint: {left[:6]}")
    return module


def _indices(sd: dict, pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in sd if (m := rx.fullmatch(k))})


def generator_config(sd: dict) -> dict:
    """Generator constructor arguments from a rosinality ``g_ema`` state dict."""
    missing = [k for k in ("style.1.weight", "input.input", "conv1.conv.weight") if k not in sd]
    if missing:
        raise CheckpointError(f"not a rosinality StyleGAN2 generator state dict (missing {missing})")
    n_mlp = len(_indices(sd, r"style\.(\d+)\.weight"))
    n_convs = len(_indices(sd, r"convs\.(\d+)\.conv\.weight"))
    size = 2 ** (n_convs // 2 + 2)
    channels = {4: int(sd["conv1.conv.weight"].shape[1])}
    for i in range(n_convs // 2):
        channels[2 ** (i + 3)] = int(sd[f"convs.{2 * i}.conv.weight"].shape[1])
    cm = next((m for m in (1, 2, 4) if all(default_channels(m)[r] == c for r, c in channels.items())), None)
    return {"size": size, "style_dim": int(sd["style.1.weight"].shape[1]), "n_mlp": n_mlp,
            "channel_multiplier": cm or 2, "channels": channels}


def generator_from_state_dict(sd: dict, what: str = "generator") -> Generator:
    cfg = generator_config(sd)
    return materialize(lambda: Generator(**cfg), sd, what)


def load_generator(path, device="cpu", allow_pickle: bool = False) -> Generator:
    """A rosinality StyleGAN2 generator (``g_ema``), strict keys. ``latent_avg`` of the file (if
    any) is attached as the plain attribute ``generator.latent_avg`` (else None).

    A ``.pkl`` file is a StyleGAN2-ADA network pickle: its ``G_ema`` is converted by
    ``e4e.models.ada`` (read without running code from the file, whatever ``allow_pickle``;
    ``latent_avg`` = the pickle's ``w_avg``, else the mapping mean over 10000 z, seed 0)."""
    if str(path).lower().endswith(".pkl"):
        from e4e.models.ada import load_ada_generator

        return load_ada_generator(resolve_path(path), device)
    obj = load_checkpoint(path, allow_pickle)
    kind = checkpoint_kind(obj)
    if kind != "generator":
        raise _wrong_kind(path, kind, "StyleGAN2 generator", obj)
    sd = obj["g_ema"] if "g_ema" in obj else obj
    g = generator_from_state_dict(sd, f"{path} (g_ema)")
    la = obj.get("latent_avg") if "g_ema" in obj else None
    g.latent_avg = la.float().to(device) if torch.is_tensor(la) else None
    return g.to(device)


def _plain(obj):
    """Containers of primitives only (so files stay loadable with weights_only=True)."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return str(obj)
    return obj


def _atomic_save(obj, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from e4e.fileio import atomic_torch_save

    return atomic_torch_save(obj, path)


def save_generator(g: Generator, path, latent_avg: torch.Tensor | None = None, extra: dict | None = None) -> Path:
    """Rosinality format ``{'g_ema': state_dict, 'latent_avg'?: tensor, **extra}``."""
    ck = {k: v for k, v in _plain(extra or {}).items() if k not in ("g_ema", "latent_avg")}
    ck["g_ema"] = {k: v.detach().cpu() for k, v in g.state_dict().items()}
    if latent_avg is None:
        latent_avg = getattr(g, "latent_avg", None)
    if latent_avg is not None:
        ck["latent_avg"] = latent_avg.detach().cpu()
    return _atomic_save(ck, path)


# ---------------------------------------------------------------------------------------------
# inverters
# ---------------------------------------------------------------------------------------------
def save_inverter(inverter: Inverter, path, extra: dict | None = None, config: dict | None = None) -> Path:
    """Write this project's inverter format (see the module docstring)."""
    enc = inverter.encoder
    ck = {"format": INVERTER_FORMAT, "version": 1, "method": inverter.method,
          "encoder_kwargs": _plain(enc.config()), "inverter_kwargs": _plain(inverter.inverter_config()),
          "progressive_stage": getattr(enc, "progressive_stage", None),
          "generator_config": _plain(inverter.decoder.config()),
          "encoder": {k: v.detach().cpu() for k, v in enc.state_dict().items()},
          "decoder": {k: v.detach().cpu() for k, v in inverter.decoder.state_dict().items()},
          "latent_avg": inverter.latent_avg.detach().cpu(), "config": _plain(config), "extra": _plain(extra)}
    return _atomic_save(ck, path)


def _strip(sd: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


ENCODER_TYPES = {"Encoder4Editing": "e4e", "GradualStyleEncoder": "psp",
                 "BackboneEncoderUsingLastLayerIntoW": "w_encoder",
                 "BackboneEncoder": "restyle_psp", "ResNetBackboneEncoder": "restyle_psp",
                 "ProgressiveBackboneEncoder": "restyle_e4e", "ResNetProgressiveBackboneEncoder": "restyle_e4e"}
E4E_OPTS = ("progressive_steps", "progressive_start", "w_discriminator_lambda", "delta_norm_lambda")
FAMILY = {k: v for k, v in FAMILIES.items() if k != "optim"}  # encoder families of the method table


def _family(enc: dict) -> str:
    if "latlayer1.weight" in enc:
        return "pyramid"
    if "linear.weight" in enc and "styles.0.linear.weight" not in enc:
        return "single"
    if "styles.0.linear.weight" in enc:
        return "restyle"
    raise CheckpointError("encoder keys match no known encoder (no latlayer1 / styles / linear)")


def detect_method(enc: dict, opts: dict) -> str:
    """Method of an official checkpoint: the family from the keys, e4e-vs-pSp flavour from ``opts``."""
    family = _family(enc)
    from_type = ENCODER_TYPES.get(str(opts.get("encoder_type", "")))
    if from_type is not None:
        if from_type not in FAMILY[family]:
            raise CheckpointError(f"opts.encoder_type={opts['encoder_type']!r} contradicts the encoder keys ({family})")
        return from_type
    progressive = any(k in opts for k in E4E_OPTS)
    (method,) = [m for m in FAMILY[family] if len(FAMILY[family]) == 1 or METHODS[m].progressive == progressive]
    return method


def encoder_kwargs_from_state_dict(enc: dict, n_latent: int) -> dict:
    """Architecture of an encoder state dict (backbone, width, blocks per stage, map2style sizes)."""
    if "conv1.weight" in enc:
        backbone, stem, marker = "resnet34", enc["conv1.weight"], "downsample.0.weight"
    elif "input_layer.0.weight" in enc:
        se = any(k.endswith("res_layer.5.fc1.weight") for k in enc)
        backbone, stem, marker = ("ir_se50" if se else "ir50"), enc["input_layer.0.weight"], "shortcut_layer.0.weight"
    else:
        raise CheckpointError("encoder has neither an IR-SE input_layer nor a ResNet conv1")
    blocks = _indices(enc, r"body\.(\d+)\..*")
    starts = [0] + [i for i in blocks if f"body.{i}.{marker}" in enc and i > 0]
    if len(starts) != 4:
        raise CheckpointError(f"cannot split the encoder body into 4 stages (stage starts {starts})")
    units = [b - a for a, b in zip(starts, starts[1:] + [len(blocks)])]
    kw = {"n_latent": n_latent, "input_nc": int(stem.shape[1]), "backbone": backbone,
          "width": stem.shape[0] / 64, "units": units}
    if "styles.0.linear.weight" in enc:
        n_convs = len(_indices(enc, r"styles\.0\.convs\.(\d+)\.weight"))
        kw.update(style_dim=int(enc["styles.0.linear.weight"].shape[0]),
                  block_ch=int(enc["styles.0.convs.0.weight"].shape[0]), input_size=16 * 2 ** n_convs)
    else:
        kw.update(style_dim=int(enc["linear.weight"].shape[0]))
    return kw


def _input_size(opts: dict, arch_size: int):
    """Encoder input size: official cars transforms resize to 192x256, everything else 256."""
    return (192, 256) if "car" in str(opts.get("dataset_type", "")) else arch_size


def _build_inverter(method, enc_kwargs, enc_sd, dec_sd, latent_avg, inv_kwargs, path, stage=None) -> Inverter:
    load_inverters()
    from e4e.models.encoders import build_encoder

    generator = generator_from_state_dict(dec_sd, f"{path} (decoder)")
    encoder = materialize(lambda: build_encoder(method, **enc_kwargs), enc_sd, f"{path} (encoder, {method})")
    if stage is not None and hasattr(encoder, "set_progressive_stage"):
        encoder.set_progressive_stage(stage)
    inv = get_inverter(method)(generator, latent_avg=latent_avg, encoder=encoder, **inv_kwargs)
    return inv.eval()


def _official_inverter(obj: dict, path, method: str | None) -> Inverter:
    sd = obj["state_dict"]
    enc, dec = _strip(sd, "encoder."), _strip(sd, "decoder.")
    opts = obj.get("opts") or {}
    opts = vars(opts) if isinstance(opts, argparse.Namespace) else dict(opts)
    method = method or detect_method(enc, opts)
    la = obj.get("latent_avg")
    gen_size = generator_config(dec)["size"]
    n_gen = 2 * (gen_size.bit_length() - 1) - 2
    if torch.is_tensor(la) and la.ndim == 2 and la.shape[0] > 1:
        n_latent = int(la.shape[0])
    elif "styles.0.linear.weight" in enc:
        n_latent = len(_indices(enc, r"styles\.(\d+)\.linear\.weight"))
    else:
        n_latent = n_gen
    if n_latent != n_gen:
        raise CheckpointError(f"{path}: encoder has {n_latent} W+ rows but its decoder needs {n_gen}")
    kw = encoder_kwargs_from_state_dict(enc, n_latent)
    inv_kwargs = {"input_size": _input_size(opts, kw.get("input_size", 256))}
    if method.startswith("restyle_"):
        inv_kwargs["n_iters"] = int(opts.get("n_iters_per_batch", 5))
    if torch.is_tensor(la):
        la = la.float().reshape(-1, la.shape[-1]).expand(n_latent, -1).clone()
    return _build_inverter(method, kw, enc, dec, la, inv_kwargs, path)


OWN_INVERTER_KEYS = ("method", "encoder_kwargs", "encoder", "decoder", "latent_avg")


def _own_inverter(obj: dict, path) -> Inverter:
    require_keys(obj, OWN_INVERTER_KEYS, path, "e4e-lab inverter")
    n_gen = 2 * (generator_config(obj["decoder"])["size"].bit_length() - 1) - 2
    rows = {"encoder": (obj["encoder_kwargs"] or {}).get("n_latent", n_gen),
            "latent_avg": obj["latent_avg"].reshape(-1, obj["latent_avg"].shape[-1]).shape[0]}
    if rows["encoder"] != n_gen or rows["latent_avg"] not in (1, n_gen):
        raise CheckpointError(f"{path}: W+ rows {rows} do not fit its generator, which needs {n_gen}: the encoder "
                              "and the generator of this file do not belong together")
    inv_kwargs = dict(obj.get("inverter_kwargs") or {})
    if isinstance(inv_kwargs.get("input_size"), list):
        inv_kwargs["input_size"] = tuple(inv_kwargs["input_size"])
    return _build_inverter(obj["method"], dict(obj["encoder_kwargs"]), obj["encoder"], obj["decoder"],
                           obj["latent_avg"].float(), inv_kwargs, path, obj.get("progressive_stage"))


def load_inverter(path, device="cpu", allow_pickle: bool = False, method: str | None = None) -> Inverter:
    """An Inverter from an official e4e / pSp / ReStyle file or this project's format, in eval mode.
    ``method`` overrides the detection for official files whose ``opts`` are missing."""
    obj = load_checkpoint(path, allow_pickle)
    kind = checkpoint_kind(obj)
    if kind == INVERTER_FORMAT:
        check_finite({**obj.get("encoder", {}), "latent_avg": obj.get("latent_avg")}, path)
    if kind == "official_inverter":
        check_finite(obj["state_dict"], path)
    loaders = {INVERTER_FORMAT: lambda: _own_inverter(obj, path),
               "official_inverter": lambda: _official_inverter(obj, path, method)}
    if kind not in loaders:
        raise _wrong_kind(path, kind, "inverter (encoder)", obj)
    return loaders[kind]().to(device)


def _copy_trunk(encoder: nn.Module, trunk: dict, generator: torch.Generator | None = None) -> list[str]:
    """Load ``trunk`` tensors into ``encoder``; the first conv is fitted to the encoder's input
    channels (extra ones N(0,1), as pSp/ReStyle do for 6-channel inputs). Copies nothing and returns
    the offending keys when a tensor is missing from the encoder or has another shape."""
    from e4e.models.backbones import expand_input_channels

    own = encoder.state_dict()
    trunk = dict(trunk)
    first = next((k for k in trunk if k.endswith("weight") and trunk[k].ndim == 4), None)  # the stem conv
    if first in own and trunk[first].shape[1] != own[first].shape[1]:
        trunk[first] = expand_input_channels(trunk[first], own[first].shape[1], generator)
    bad = [k for k, v in trunk.items() if k not in own or v.shape != own[k].shape]
    if not bad and trunk:
        encoder.load_state_dict(trunk, strict=False)
    return bad if trunk else ["(no trunk tensors)"]


def init_encoder_from_irse50(encoder: nn.Module, path=None, generator: torch.Generator | None = None) -> nn.Module:
    """Official encoder initialisation for faces: copy ``model_ir_se50.pth`` into ``input_layer`` and
    ``body`` (extra input channels N(0,1), as pSp/ReStyle do for 6-channel inputs)."""
    sd = load_checkpoint(weights.require("ir_se50", path))
    own = encoder.state_dict()
    bad = _copy_trunk(encoder, {k: v for k, v in sd.items() if k.split(".")[0] in ("input_layer", "body")
                                and k in own}, generator)
    if bad:
        raise CheckpointError(f"{path or 'model_ir_se50.pth'}: does not fit the encoder trunk (e.g. {bad[:4]}); "
                         "use the full-width IR-SE-50 encoder")
    return encoder


def trunk_arch(kwargs: dict) -> dict:
    """``{'backbone', 'width', 'units'}`` of a trunk from constructor keyword arguments
    (``EncoderBase.config()`` or a trunk file's ``arch``); units None = the backbone's default."""
    from e4e.models.backbones import TRUNKS

    backbone = kwargs.get("backbone", "ir_se50")
    return {"backbone": backbone, "width": float(kwargs.get("width", 1.0)),
            "units": [int(n) for n in (kwargs.get("units") or TRUNKS[backbone][1])]}


def trunk_state_dict(module: nn.Module) -> dict:
    """The trunk tensors (stem + ``body``) of a ``TrunkMixin`` module, on the CPU."""
    roots = module.trunk_modules()
    return {k: v.detach().cpu() for k, v in module.state_dict().items() if k.split(".")[0] in roots}


def save_trunk(module: nn.Module, path, arch: dict, extra: dict | None = None) -> Path:
    """Write an encoder-trunk file (format ``e4e-lab-trunk``, see the module docstring), atomically."""
    ck = {"format": TRUNK_FORMAT, "version": 1, "arch": _plain(arch), "state_dict": trunk_state_dict(module),
          "extra": _plain(extra)}
    return _atomic_save(ck, path)


def load_trunk(path) -> dict:
    """An encoder-trunk file as saved by :func:`save_trunk` (a wrong kind of file is a ValueError)."""
    obj = load_checkpoint(path)
    kind = checkpoint_kind(obj)
    if kind != TRUNK_FORMAT:
        raise _wrong_kind(path, kind, "encoder trunk", obj)
    return obj


def init_encoder_from_trunk(encoder: nn.Module, path, generator: torch.Generator | None = None) -> nn.Module:
    """Copy a trunk file into ``encoder`` (an ``EncoderBase``); the backbone, width and units must be
    the encoder's. Input channels may differ (ReStyle's 6: RGB filters first, the rest N(0,1))."""
    obj = load_trunk(path)
    have, want = trunk_arch(obj["arch"]), trunk_arch(encoder.config())
    if have != want:
        raise CheckpointError(f"{path}: the trunk's architecture {have} does not match the encoder's {want}")
    missing = [k for k in trunk_state_dict(encoder) if k not in obj["state_dict"]]
    bad = missing or _copy_trunk(encoder, obj["state_dict"], generator)
    if bad:
        raise CheckpointError(f"{path}: the trunk does not fit the encoder (e.g. {bad[:4]})")
    return encoder


# ---------------------------------------------------------------------------------------------
# RNG state (training checkpoints of the encoder trainer and the synth GAN trainer)
# ---------------------------------------------------------------------------------------------
def rng_state() -> dict:
    """torch / numpy / python (and CUDA, once initialised) generator states, for exact resume, as
    tensors and plain containers only (so checkpoints load with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    st = {"torch": torch.get_rng_state(),
          "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, np.int64)), "pos": int(pos),
                    "has_gauss": int(has_gauss), "gauss": float(gauss)},
          "python": [int(version), [int(x) for x in internal], gauss_next]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(st["torch"])
    n = st["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss_next = st["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])
