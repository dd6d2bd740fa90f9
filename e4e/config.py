"""Typed training configuration (docs/design.md §1, §5).

The dataclass defaults ARE the official e4e recipe (official README / docs/design.md §7). Experiment YAML
files hold only deltas; a YAML file may include others with ``defaults: [base.yaml, ...]`` (paths
relative to the including file, merged in order, then the file's own keys). The command line adds a
dotlist ``key.sub=value``. Merge order: dataclass defaults <- YAML files (in order) <- dotlist.

Validation: unknown keys raise ``ConfigError`` listing the valid keys of that section with a close
match suggestion; values are coerced to the declared type (``true``/``false`` strings for bools,
``1e-4`` for floats) and a value that cannot be converted raises ``ConfigError`` naming the key.

``config_hash(cfg)`` identifies a run's *scientific* content: the sha256 of the resolved config
without the run-location keys (``RUN_LOCATION_KEYS``: where it writes, which device, how often it
logs), so a grid can skip members that already finished.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import re
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from e4e.inverters import METHODS


class ConfigError(ValueError):
    """An invalid configuration: unknown key, wrong type or bad value."""


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict = 3, 80, 80, 6, 6


def short_repr(value) -> str:
    """A bounded repr for error messages (a huge or deeply nested value is elided, never expanded)."""
    return _REPR.repr(value)


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------
@dataclass
class DataConfig:
    """Where the images come from. ``domain`` selects transforms, sizes and the identity network
    (``e4e.data.DOMAINS``)."""

    domain: str = "synth"
    train_dir: str = ""          # image folder of the training split ("" = the domain's default, if any)
    val_dir: str = ""            # validation split for best-checkpoint selection ("" = hold out val_fraction of train)
    val_fraction: float = 0.05   # used only when val_dir is empty; never the test split
    val_max_images: int = 256    # cap on validation images per evaluation
    image_size: int = 0          # encoder input size (0 = the domain's enc_input)
    hflip: bool = True           # random horizontal flip of training images (official transforms)
    num_workers: int = 0
    scan: bool = True            # decode every image once at start-up: unreadable files stop the run before any step
    strict_size: bool = False    # images of another aspect ratio or smaller than the input: error instead of a warning


@dataclass
class ModelConfig:
    """Which inversion method and generator. ``encoder`` holds extra keyword arguments forwarded to
    the method's constructor (e.g. ``width`` / ``small`` options of the encoders)."""

    method: str = "e4e"          # e4e | psp | w_encoder | restyle_e4e | restyle_psp
    generator: str = ""          # rosinality .pt ("" = the domain's default generator)
    encoder: dict[str, Any] = field(default_factory=dict)
    restyle_iters: int = 5       # ReStyle: refinement iterations per batch (train and test)
    noise_mode: str = "random"   # generator noise while training (official: randomize_noise=True)
    init_checkpoint: str = ""    # optional inverter checkpoint to start the encoder from (fine-tuning)
    # encoder trunk initialisation (input_layer + body; applied before init_checkpoint, which overrides
    # it): "" random | "synth" the committed synth trunk (e4e/synth/assets/encoder_trunk_synth64.pt,
    # small preset) | "ir_se50" model_ir_se50.pth (full-width IR-SE-50) | a path to a trunk file
    trunk_init: str = ""


@dataclass
class LossConfig:
    """Reconstruction losses. A lambda of 0 removes the term and its pretrained-weights requirement."""

    l2_lambda: float = 1.0
    lpips_lambda: float = 0.8
    lpips_net: str = "alex"      # alex | vgg (lpips package; trunk from the torch cache) | domain (synth attribute net)
    id_lambda: float = 0.1       # 0.1 faces (ArcFace); 0.5 for MoCo domains (set by the domain YAML)
    id_kind: str = "auto"        # arcface | moco | domain | auto (= the domain's identity network)


@dataclass
class DeltaRegConfig:
    """L_d-reg: sum over active offsets of ||w_i - w_0||_2 (unsquared), batch mean. ``weight`` = lambda.
    On when ``enabled`` and ``weight > 0`` (the rule for every loss term: weight > 0, plus the switch
    where there is one; the grid's ablations flip only ``enabled``)."""

    enabled: bool = True
    weight: float = 2e-4


@dataclass
class AdversarialConfig:
    """Latent discriminator on the encoded codes (real = mapping(z)). ``weight`` = encoder lambda; on
    when ``enabled`` and ``weight > 0`` (no discriminator is built otherwise)."""

    enabled: bool = True
    weight: float = 0.1
    d_lr: float = 2e-5
    r1_gamma: float = 10.0
    r1_every: int = 16
    pool_size: int = 50          # codes pool (0 = no pool)


@dataclass
class ProgressiveConfig:
    """Progressive training of the e4e offsets: stage 0 (only w_0) until ``start``, then one more
    offset every ``interval`` steps. With ``scale_with_steps`` and ``max_steps < reference_steps``,
    start and interval are multiplied by max_steps / reference_steps (short runs still pass every
    stage). When disabled every offset is active from step 0."""

    enabled: bool = True
    start: int = 20000
    interval: int = 2000
    scale_with_steps: bool = True
    reference_steps: int = 300000


@dataclass
class OptimConfig:
    name: str = "ranger"         # ranger | adam
    lr: float = 1e-4
    weight_decay: float = 0.0


@dataclass
class ProjectionConfig:
    """Optimisation inversion (baselines.optim: optim_w, optim_wplus, optim_from_encoder), NVlabs
    projector defaults. ``perceptual``: 'lpips_vgg' (official) when its VGG16 trunk exists; otherwise
    ``fallback`` is used and its name recorded (``perceptual`` attribute / run tag). Set
    ``fallback: none`` to make a missing VGG16 an error instead."""

    steps: int = 1000
    lr: float = 0.1
    w_avg_samples: int = 10000
    lr_rampup: float = 0.05
    lr_rampdown: float = 0.25
    noise_strength: float = 0.05
    noise_ramp: float = 0.75
    noise_reg_weight: float = 1e5
    optimize_noise: bool = True
    perceptual: str = "lpips_vgg"   # lpips_vgg | lpips_alex | l2 | domain_features
    fallback: str = "l2"            # used when ``perceptual``'s weights are missing ("none" = error)
    l2_weight: float = 0.0          # optional extra pixel MSE term
    encoder_checkpoint: str = ""    # optim_from_encoder: the inverter checkpoint giving the start codes


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    delta_reg: DeltaRegConfig = field(default_factory=DeltaRegConfig)
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)
    progressive: ProgressiveConfig = field(default_factory=ProgressiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    projection: ProjectionConfig = field(default_factory=ProjectionConfig)
    batch_size: int = 8          # per process (DDP: each rank draws batch_size images)
    max_steps: int = 300000
    log_every: int = 50          # loss metrics every N steps
    val_every: int = 2000        # validation (best-checkpoint selection) every N steps
    image_every: int = 1000      # image grid artifact every N steps
    image_edits: list[str] = field(default_factory=list)  # edit rows in the grids: "direction:strength"
    ckpt_every: int = 2000       # last.pt (+ buffered metrics flushed) every N steps
    flush_every: int = 10        # buffered metrics also flushed every flush_every x log_every steps (0 = off)
    flush_seconds: float = 30.0  # ... and when the last flush is this old, at a logged step (0 = off)
    log_last_checkpoint: bool = False  # also log last.pt (with the optimiser state: large) as an artifact
    seed: int = 0
    out_dir: str = ""            # "" = runs/<domain>/<method>-<config_hash[:10]>
    device: str = "auto"         # auto | cpu | cuda | cuda:N
    experiment: str = ""         # MLflow experiment ("" = the domain name)
    run_name: str = ""           # MLflow run name ("" = method + hash)
    progress: bool = True        # progress bar
    precision: str = "fp32"      # fp32 | bf16: bfloat16 autocast of the training forward (encoder, generator,
    #                              losses); bench/bench_step.py measures its speed and accuracy
    compile: bool = False        # torch.compile the generator synthesis of the training step


# keys that say where/how a run executes, not what it computes (excluded from config_hash)
RUN_LOCATION_KEYS = frozenset({
    "out_dir", "device", "experiment", "run_name", "progress", "log_every", "image_every", "image_edits",
    "ckpt_every", "flush_every", "flush_seconds", "log_last_checkpoint",
    "data.num_workers",
})


# ---------------------------------------------------------------------------------------------
# Coercion
# ---------------------------------------------------------------------------------------------
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _to_bool(v):
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in _TRUE | _FALSE:
        return v.strip().lower() in _TRUE
    raise TypeError("expected a boolean (true/false)")


def _to_int(v):
    if isinstance(v, bool):
        raise TypeError("expected an integer, got a boolean")
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str):
        s = v.strip().replace("_", "")
        try:
            return int(s)
        except ValueError:
            try:
                f = float(s)  # '2e4' is an integer written in float notation
            except ValueError:
                raise TypeError("expected an integer") from None
            if f.is_integer():
                return int(f)
    raise TypeError("expected an integer")


def _to_float(v):
    if isinstance(v, bool):
        raise TypeError("expected a number, got a boolean")
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v.strip())
        except ValueError:
            raise TypeError("expected a number") from None
    raise TypeError("expected a number")


def _to_str(v):
    if isinstance(v, (dict, list)):
        raise TypeError("expected a string")
    return "" if v is None else str(v)


_SCALARS = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str}


_FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)$")


def parse_value(text: str):
    """The project's one override grammar for a value: YAML (so lists / dicts / null / booleans work),
    plain words left as strings, and exponent floats without a dot (``1e-7``, which YAML 1.1 reads
    as a string) read as floats."""
    try:
        v = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass (bounded, no dup keys)
    except yaml.YAMLError:
        return text
    except RecursionError:
        raise ConfigError(f"value nested too deeply: {short_repr(text)}") from None
    if isinstance(v, str) and _FLOAT_RE.match(v.strip()):
        return float(v)
    if isinstance(v, (int, float)) and not isinstance(v, bool) and ":" in text:
        return text.strip()  # YAML 1.1 base-60 numbers ("4:16" -> 256): keep the text ("res:ch", "cuda:0")
    return v


def split_override(item: str) -> tuple[str, Any]:
    """One ``key=value`` item (leading dashes dropped) -> (key, value by ``parse_value``; an empty
    value is the empty string)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not key=value (key.sub=value)")
    k, v = item.split("=", 1)
    k = k.strip().lstrip("-")
    if not k:
        raise ConfigError(f"override {item!r} has an empty key")
    return k, parse_value(v) if v.strip() else ""


def parse_dotlist(items) -> dict[str, Any]:
    """``["a.b=1", "c=true"]`` -> ``{"a.b": 1, "c": True}``: the one ``key=value`` grammar of every CLI
    and grid file (``split_override`` per item)."""
    return dict(split_override(it) for it in items)


def _coerce(value, tp, key: str):
    origin = typing.get_origin(tp)
    try:
        if tp in _SCALARS:
            return _SCALARS[tp](value)
        if tp is Any:
            return parse_value(value) if isinstance(value, str) else value
        if origin in (typing.Union, types.UnionType):
            args = typing.get_args(tp)
            if value is None or (isinstance(value, str) and value.strip().lower() in ("null", "none")):
                if type(None) in args:
                    return None
            for a in args:
                if a is type(None):
                    continue
                try:
                    return _coerce(value, a, key)
                except ConfigError:
                    continue
            raise TypeError(f"expected one of {[getattr(a, '__name__', a) for a in args]}")
        if origin is list:
            (item,) = typing.get_args(tp) or (Any,)
            if isinstance(value, str):
                value = parse_value(value)
            if not isinstance(value, (list, tuple)):
                raise TypeError("expected a list")
            return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        if origin is dict:
            if isinstance(value, str):
                value = parse_value(value)
            if value is None:
                return {}
            if not isinstance(value, dict):
                raise TypeError("expected a mapping")
            _, vt = typing.get_args(tp) or (str, Any)
            return {str(k): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config key '{key}': {e}; got {short_repr(value)} ({type(value).__name__})") from None
    raise ConfigError(f"config key '{key}': unsupported field type {tp}")


# public name of the one value coercion (other dataclass configs, e.g. ``e4e.synth.gan.GANConfig``, use it)
coerce_value = _coerce


def _unknown_key_error(key: str, valid: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], valid, n=1, cutoff=0.5)
    parent = key.rsplit(".", 1)[0] + "." if "." in key else ""
    hint = f" Did you mean '{parent}{close[0]}'?" if close else ""
    return ConfigError(f"unknown config key '{key}'{where}.{hint} Valid keys here: {', '.join(sorted(valid))}")


# ---------------------------------------------------------------------------------------------
# Building / merging
# ---------------------------------------------------------------------------------------------
def _apply(obj, overrides: dict, prefix: str = "", where: str = ""):
    """Apply a nested dict of overrides onto dataclass ``obj`` in place (validated, coerced)."""
    if not isinstance(overrides, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<root>'}'{where} must be a mapping, "
                          f"got {short_repr(overrides)}")
    hints = typing.get_type_hints(type(obj))
    fields = {f.name: f for f in dataclasses.fields(obj)}
    for k, v in overrides.items():
        k = str(k)
        key = prefix + k
        if k not in fields:
            raise _unknown_key_error(key, list(fields), where)
        cur = getattr(obj, k)
        if dataclasses.is_dataclass(cur):
            if v is None:
                continue
            _apply(cur, v, key + ".", where)
        elif typing.get_origin(hints[k]) is dict and isinstance(v, dict):
            merged = dict(cur)
            merged.update(_coerce(v, hints[k], key))
            setattr(obj, k, merged)
        else:
            setattr(obj, k, _coerce(v, hints[k], key))
    return obj


# command-line shorthands for frequently set keys (the canonical key is the value)
ALIASES = {"method": "model.method", "domain": "data.domain", "generator": "model.generator"}


def _dotlist_to_nested(dotlist: list[str]) -> list[dict]:
    out = []
    for item in dotlist:
        key, value = split_override(item)
        node: dict = {}
        root = node
        parts = ALIASES.get(key, key).split(".")
        for p in parts[:-1]:
            node[p] = {}
            node = node[p]
        node[parts[-1]] = value
        out.append(root)
    return out


def _nest_key(key: str, value) -> dict:
    root: dict = {}
    node = root
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return root


# bounds on what a YAML document may expand to: an alias counts as a copy of what it names, so a
# "billion laughs" file of a few hundred bytes is refused before any value is built
MAX_YAML_NODES = 200_000
MAX_YAML_DEPTH = 64


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (YAML keeps the last one silently) and
    a document whose expanded size (aliases counted as copies) or depth exceeds the bounds above."""

    def construct_document(self, node):
        _check_expansion(node)
        return super().construct_document(node)


def _children(node) -> list:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


def _check_expansion(root) -> None:
    """Expanded node count and depth of a composed document, computed once per node (linear in the
    file, not in its expansion); a recursive alias is refused too."""
    size: dict[int, int] = {}
    on_path: set[int] = set()
    stack = [(root, False, 1)]
    while stack:
        node, done, depth = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            size[key] = 1 + sum(size[id(c)] for c in _children(node))
            if size[key] > MAX_YAML_NODES:
                _yaml_refusal(node, f"expands to more than {MAX_YAML_NODES} values (aliases counted as copies)")
            continue
        if key in size:
            continue
        if key in on_path:
            _yaml_refusal(node, "a recursive alias (a value that contains itself)")
        if depth > MAX_YAML_DEPTH:
            _yaml_refusal(node, f"nested deeper than {MAX_YAML_DEPTH} levels")
        on_path.add(key)
        stack.append((node, True, depth))
        stack.extend((c, False, depth + 1) for c in _children(node))


def _yaml_refusal(node, what: str):
    mark = node.start_mark
    raise ConfigError(f"{mark.name}:{mark.line + 1}:{mark.column + 1}: YAML value refused: {what}")


def _mapping_without_duplicates(loader: _StrictLoader, node, deep: bool = False):
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            mark = key_node.start_mark
            raise ConfigError(f"{mark.name}:{mark.line + 1}:{mark.column + 1}: key {short_repr(key)} given twice "
                              f"(first at line {seen[key].line + 1})")
        seen[key] = key_node.start_mark
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def read_yaml(path: str | Path) -> Any:
    """One YAML file; a syntax error, a duplicate key or a document beyond the size / depth bounds is
    a ``ConfigError`` naming file:line:column."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.load(f, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid YAML: nested too deeply") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None


def load_yaml_chain(path: str | Path, _seen: tuple = ()) -> list[tuple[dict, str]]:
    """A YAML file and its ``defaults`` includes, as (delta dict, source) pairs in merge order."""
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"circular 'defaults' include: {' -> '.join(map(str, _seen + (path,)))}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    data = read_yaml(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    includes = data.pop("defaults", []) or []
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) and i.strip() for i in includes):
        raise ConfigError(f"{path}: 'defaults' must be a file name or a list of file names, "
                          f"got {short_repr(includes)}")
    chain: list[tuple[dict, str]] = []
    for inc in includes:
        chain += load_yaml_chain(path.parent / inc, _seen + (path,))
    chain.append((data, str(path)))
    return chain


def build_config(yaml_files: list[str | Path] | str | Path | None = None, dotlist: list[str] | None = None,
                 overrides: dict | None = None) -> TrainConfig:
    """defaults <- YAML files (each with its includes, in order) <- ``overrides`` dict <- dotlist."""
    cfg = TrainConfig()
    if isinstance(yaml_files, (str, Path)):
        yaml_files = [yaml_files]
    seen: set[str] = set()
    for yf in yaml_files or []:
        for delta, src in load_yaml_chain(yf):
            if src in seen:  # a file included twice (e.g. base.yaml by two deltas) applies once
                continue
            seen.add(src)
            _apply(cfg, delta, where=f" (in {src})")
    if overrides:
        for k, v in overrides.items():  # nested dicts or dotted keys
            _apply(cfg, _nest_key(ALIASES.get(k, k), v), where=" (in overrides)")
    for nested in _dotlist_to_nested(dotlist or []):
        _apply(cfg, nested, where=" (command line)")
    validate(cfg)
    return cfg


_CHOICES = {
    "model.method": tuple(METHODS),
    "projection.perceptual": ("lpips_vgg", "lpips_alex", "l2", "domain_features"),
    "projection.fallback": ("lpips_vgg", "lpips_alex", "l2", "domain_features", "none"),
    "model.noise_mode": ("const", "random", "none"),
    "loss.lpips_net": ("alex", "vgg", "domain"),
    "loss.id_kind": ("auto", "arcface", "moco", "domain"),
    "optim.name": ("ranger", "adam"),
    "precision": ("fp32", "bf16"),
}
_POSITIVE = ("projection.steps", "projection.w_avg_samples", "batch_size", "max_steps", "log_every", "val_every",
             "image_every", "ckpt_every",
             "adversarial.r1_every", "progressive.interval", "model.restyle_iters", "data.val_max_images")
_NON_NEGATIVE = ("loss.l2_lambda", "loss.lpips_lambda", "loss.id_lambda", "delta_reg.weight", "adversarial.weight",
                 "adversarial.r1_gamma", "adversarial.pool_size", "progressive.start", "optim.lr",
                 "data.val_fraction", "data.image_size", "data.num_workers", "adversarial.d_lr",
                 "optim.weight_decay", "flush_every", "flush_seconds")
_RANGES = {  # key -> (low, high) inclusive, and why
    "seed": (0, 2**32 - 1, "the numpy / torch seed range"),
}
MIN_IMAGE_SIZE = 16  # the encoders downsample 16x: data.image_size is 0 (the domain's) or at least this
# device specs: auto | cpu | mps | cuda | cuda:N (whether this machine has that device is checked at start-up,
# e4e.cli.resolve_device)
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def check_device(spec) -> str:
    """``spec`` if it names a device type this harness knows, else a ``ConfigError``."""
    if not isinstance(spec, str) or not DEVICE_PATTERN.fullmatch(spec):
        raise ConfigError(f"device {short_repr(spec)} is not one of auto, cpu, mps, cuda, cuda:N")
    return spec


def _check_encoder_kwargs(enc: dict) -> None:
    """``model.encoder``: known keys, each of its type and range (``ENCODER_RULES``)."""
    unknown = [k for k in enc if k not in ENCODER_KEYS]
    if unknown:
        close = difflib.get_close_matches(unknown[0], ENCODER_KEYS, n=1)
        hint = f" Did you mean 'model.encoder.{close[0]}'?" if close else ""
        raise ConfigError(f"unknown config key 'model.encoder.{unknown[0]}'; valid: {', '.join(ENCODER_KEYS)}.{hint}")
    for key, value in enc.items():
        rule, what = ENCODER_RULES[key]
        try:
            ok = value is None or rule(value)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ConfigError(f"config key 'model.encoder.{key}' must be {what}, got {short_repr(value)}")


def validate(cfg: TrainConfig) -> None:
    flat = to_flat_dict(cfg)
    for key, allowed in _CHOICES.items():
        if flat[key] not in allowed:
            close = difflib.get_close_matches(str(flat[key]), allowed, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"config key '{key}' must be one of {list(allowed)}, got {flat[key]!r}.{hint}")
    for key in _POSITIVE:
        if flat[key] <= 0:
            raise ConfigError(f"config key '{key}' must be > 0, got {flat[key]!r}")
    for key in _NON_NEGATIVE:
        if flat[key] < 0:
            raise ConfigError(f"config key '{key}' must be >= 0, got {flat[key]!r}")
    for key, (low, high, why) in _RANGES.items():
        if not low <= flat[key] <= high:
            raise ConfigError(f"config key '{key}' must be in [{low}, {high}] ({why}), got {flat[key]!r}")
    if 0 < cfg.data.image_size < MIN_IMAGE_SIZE:
        raise ConfigError(f"config key 'data.image_size' must be 0 (the domain's input size) or >= {MIN_IMAGE_SIZE}, "
                          f"got {cfg.data.image_size}")
    check_device(cfg.device)
    _check_encoder_kwargs(cfg.model.encoder)
    for key in _NAME_KEYS:
        _check_name(key, flat[key])
    bad = [k for k, v in flat.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise ConfigError(f"config key '{bad[0]}' must be finite, got {flat[bad[0]]!r}")
    if not 0 <= cfg.data.val_fraction < 1:
        raise ConfigError(f"config key 'data.val_fraction' must be in [0, 1), got {cfg.data.val_fraction}")
    parse_edits(cfg.image_edits)


# keyword arguments of the encoders (e4e.models.encoders.EncoderBase) a config may set under model.encoder
# (n_latent, style_dim and input_size come from the generator and the domain); tests keep this in sync
ENCODER_KEYS = ("small", "width", "units", "block_ch", "backbone", "input_nc")


def _backbones() -> tuple[str, ...]:
    from e4e.models.backbones import TRUNKS

    return tuple(TRUNKS)


def _count(v) -> bool:
    return _to_int(v) >= 1


ENCODER_RULES = {  # key -> (check, what it must be); None always passes (the encoder's default)
    "small": (lambda v: _to_bool(v) in (True, False), "a boolean"),
    "width": (lambda v: 0 < _to_float(v) < math.inf, "a number > 0"),
    "units": (lambda v: isinstance(v, (list, tuple)) and len(v) == 4 and all(map(_count, v)),
              "a list of 4 integers >= 1 (blocks per stage)"),
    "block_ch": (_count, "an integer >= 1"),
    "backbone": (lambda v: v in _backbones(), "one of the trunk backbones (ir_se50, ir50, resnet34)"),
    "input_nc": (_count, "an integer >= 1"),
}
# config values that become path components (an MLflow experiment, a run name): no separators
_NAME_KEYS = ("experiment", "run_name")


def _check_name(key: str, value: str) -> None:
    if value and ("/" in value or "\\" in value or value in (".", "..") or value.startswith("..")):
        raise ConfigError(f"config key '{key}' must be a plain name without path separators, got {value!r}")


def parse_edits(items: list[str]) -> list[tuple[str, float]]:
    """``["smile:3", "age:-2"]`` -> ``[("smile", 3.0), ("age", -2.0)]`` (config key ``image_edits``)."""
    out = []
    for item in items:
        name, sep, strength = str(item).rpartition(":")
        try:
            if not sep or not name.strip():
                raise ValueError
            value = float(strength)
        except ValueError:
            raise ConfigError(f"config key 'image_edits': {item!r} is not 'direction:strength' "
                              f"(e.g. 'smile:3')") from None
        _check_name("image_edits", name.strip())
        out.append((name.strip(), value))
    return out


# ---------------------------------------------------------------------------------------------
# Export / hashing
# ---------------------------------------------------------------------------------------------
def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def to_flat_dict(cfg, sep: str = ".") -> dict[str, Any]:
    """Dotted keys; dict-typed fields (model.encoder) are flattened too."""
    out: dict[str, Any] = {}

    def walk(d, prefix):
        for k, v in d.items():
            if isinstance(v, dict) and v:
                walk(v, f"{prefix}{k}{sep}")
            else:
                out[f"{prefix}{k}"] = v

    walk(to_dict(cfg), "")
    return out


def from_dict(d: dict) -> TrainConfig:
    """A TrainConfig from a (resolved or partial) nested dict, validated."""
    cfg = _apply(TrainConfig(), d, where=" (in dict)")
    validate(cfg)
    return cfg


def to_yaml(cfg) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save_yaml(cfg, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_yaml(cfg))
    return path


def config_hash(cfg, n: int | None = None) -> str:
    flat = {k: v for k, v in to_flat_dict(cfg).items() if k not in RUN_LOCATION_KEYS}
    h = hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()
    return h[:n] if n else h


def describe(cls=TrainConfig, prefix: str = "") -> list[tuple[str, str, Any]]:
    """(dotted key, type name, default) for every leaf key: the CLI's --help listing."""
    rows = []
    inst = cls()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        v = getattr(inst, f.name)
        if dataclasses.is_dataclass(v):
            rows += describe(type(v), prefix + f.name + ".")
        else:
            tp = hints[f.name]
            rows.append((prefix + f.name, getattr(tp, "__name__", str(tp).replace("typing.", "")), v))
    return rows


def valid_keys() -> list[str]:
    return [k for k, _, _ in describe()]
