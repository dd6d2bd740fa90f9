"""Metric registry and the evaluation context shared by every metric (docs/design.md §2).

A metric is a function ``fn(ctx: EvalContext) -> MetricResult`` registered under a name that encodes
its protocol (``l2``, ``lpips_alex``, ``swd`` ...). Parametric families are registered once with a
name template and resolved by pattern: ``lec_<direction>_<strength>`` (e.g. ``lec_age_3``,
``lec_pose_-2.5``) and ``edit_<attr>`` (e.g. ``edit_smile``); their parameters are passed to ``fn``
as keyword arguments.

A metric that cannot be computed on this machine (pretrained file missing, no face found in any
image, no editing direction for the domain) raises ``MetricUnavailable(reason)``; the evaluation
driver records it as the MLflow tag ``unavailable.<metric>`` and never as a number (docs/design.md §3).

``EvalContext`` holds the inverter, the real images (in [-1, 1]), batch size, device, domain, the
editing directions, free-form options and a cache: the images are inverted once
(``ctx.inversions()``) and every metric reuses those codes and reconstructions.
"""
from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, NamedTuple

import torch
import torch.nn.functional as F


__all__ = ["MetricResult", "MetricUnavailable", "EvalContext", "InvertedBatch", "register_metric", "get_metric",
           "list_metrics", "describe_metrics", "metric_spec", "unavailable_on_missing", "resize_like"]


class MetricResult(NamedTuple):
    """``values``: scalar results (a metric may produce several keys); ``per_image``: lists of floats
    per image (same order as the evaluation images) or ``None``."""

    values: dict[str, float]
    per_image: dict[str, list[float]] | None = None


class MetricUnavailable(RuntimeError):
    """The metric cannot be computed here; ``reason`` says why (recorded as a tag, never a number)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@contextlib.contextmanager
def unavailable_on_missing(what: str):
    """Turn a missing pretrained file (``WeightsMissingError`` or any ``FileNotFoundError`` raised
    while building the metric's network) / optional package into ``MetricUnavailable``."""
    try:
        yield
    except FileNotFoundError as exc:  # WeightsMissingError is one
        raise MetricUnavailable(f"{what}: {exc}") from exc
    except ImportError as exc:
        raise MetricUnavailable(f"{what}: a required package is not importable ({exc})") from exc


# ---------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MetricSpec:
    name: str                      # plain name or template with <params>
    fn: Callable[..., MetricResult]
    needs: tuple[str, ...] = ()    # informative: 'inversions', 'weights:<key>', 'generator', 'attrnet', 'directions'
    pattern: re.Pattern | None = None
    doc: str = ""


_METRICS: dict[str, MetricSpec] = {}
_PARAM_TYPES = {"direction": r"[A-Za-z][A-Za-z0-9]*(?:_[A-Za-z][A-Za-z0-9]*)*",
                "strength": r"[-+]?\d+(?:\.\d+)?",
                "attr": r"[A-Za-z][A-Za-z0-9_]*"}


def _template_regex(template: str) -> re.Pattern:
    parts = re.split(r"<(\w+)>", template)
    out = []
    for i, part in enumerate(parts):
        if i % 2 == 0:
            out.append(re.escape(part))
        else:
            out.append(f"(?P<{part}>{_PARAM_TYPES.get(part, r'[A-Za-z0-9_.+-]+')})")
    return re.compile("".join(out) + r"\Z")


def register_metric(name: str, needs: Iterable[str] = ()):
    """Decorator registering ``fn(ctx, **params) -> MetricResult`` under ``name`` (a template such as
    ``lec_<direction>_<strength>`` registers a parametric family)."""

    def deco(fn):
        if name in _METRICS:
            raise KeyError(f"metric {name!r} registered twice")
        pattern = _template_regex(name) if "<" in name else None
        doc = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        _METRICS[name] = MetricSpec(name, fn, tuple(needs), pattern, doc)
        return fn

    return deco


def _ensure_loaded() -> None:
    """Import the metric modules (registration happens at their import, not at ours)."""
    import metrics  # noqa: F401  (metrics/__init__ imports every metric module)


def list_metrics() -> list[str]:
    """Registered names; parametric families appear as their template."""
    _ensure_loaded()
    return sorted(_METRICS)


def describe_metrics() -> list[tuple[str, str]]:
    """(name or template, first docstring line) of every registered metric."""
    _ensure_loaded()
    return [(n, _METRICS[n].doc) for n in sorted(_METRICS)]


def metric_spec(name: str) -> tuple[MetricSpec, dict[str, str]]:
    """The spec for ``name`` and the parameters parsed from it."""
    _ensure_loaded()
    if name in _METRICS and _METRICS[name].pattern is None:
        return _METRICS[name], {}
    # longest template first so that e.g. 'lec_official_<...>' would win over 'lec_<...>'
    for spec in sorted((s for s in _METRICS.values() if s.pattern is not None), key=lambda s: -len(s.name)):
        m = spec.pattern.match(name)
        if m:
            return spec, m.groupdict()
    raise KeyError(f"unknown metric {name!r}; valid: {', '.join(list_metrics())}")


def get_metric(name: str) -> Callable[["EvalContext"], MetricResult]:
    """``fn(ctx) -> MetricResult`` for a plain or parametric metric name."""
    spec, params = metric_spec(name)
    if not params:
        return spec.fn

    def bound(ctx: "EvalContext") -> MetricResult:
        return spec.fn(ctx, **params)

    bound.__name__ = name
    return bound


# ---------------------------------------------------------------------------------------------
# evaluation context
# ---------------------------------------------------------------------------------------------
def resize_like(y: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Generator output -> the real images' size, as the official inference does: adaptive average
    pooling to width x width ('face_pool'), then a centred crop of the rows (cars: 256 -> rows 32:224)."""
    h, w = hw
    if tuple(y.shape[-2:]) == (h, w):
        return y
    if y.shape[-1] != w:
        y = F.adaptive_avg_pool2d(y, (w, w))
    if y.shape[-2] != h:
        top = (y.shape[-2] - h) // 2
        y = y[..., top:top + h, :]
    return y


class InvertedBatch(NamedTuple):
    x: torch.Tensor       # real images [B,3,H,W] in [-1,1] (CPU)
    codes: torch.Tensor   # W+ codes [B,n_latent,D] with latent_avg added (CPU)
    y: torch.Tensor       # reconstructions resized to the real images' size (CPU)


@dataclass
class EvalContext:
    """Everything a metric may need. ``images``: a tensor [N,3,H,W] or an iterable of such batches in
    [-1, 1]. ``directions``: name -> direction tensor ([1,D] / [1,n_latent,D]) or GANSpace spec dict.
    ``options``: metric-specific settings (e.g. ``swd_seed``, ``edit_strength``, ``latent_n_ref``).
    ``data_path``: where the images come from (key of cached FID reference statistics)."""

    inverter: Any
    images: Any
    batch_size: int = 8
    device: str | torch.device = "cpu"
    domain: str = "synth"
    directions: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    data_path: str | None = None
    seed: int = 0
    progress: bool = False
    cache: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        imgs = self.images
        if not torch.is_tensor(imgs):
            imgs = torch.cat([b[0] if isinstance(b, (tuple, list)) else b for b in imgs])
        if imgs.ndim != 4 or imgs.shape[1] != 3:
            raise ValueError(f"images must be [N,3,H,W] in [-1,1], got {tuple(imgs.shape)}")
        self.images = imgs.detach().float().cpu()
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.device = torch.device(self.device)

    # -- data ------------------------------------------------------------------------------------
    @property
    def n_images(self) -> int:
        return self.images.shape[0]

    @property
    def image_hw(self) -> tuple[int, int]:
        return tuple(self.images.shape[-2:])

    def option(self, key: str, default: Any) -> Any:
        return self.options.get(key, default)

    def batches(self) -> Iterator[torch.Tensor]:
        for i in range(0, self.n_images, self.batch_size):
            yield self.images[i:i + self.batch_size]

    def _progress(self, it, desc: str, total: int | None = None):
        if not self.progress:
            return it
        from e4e.progress import track

        return track(it, desc, total=total, leave=False)

    # -- inversions (computed once, shared by every metric) ---------------------------------------
    @torch.no_grad()
    def inversions(self) -> list[InvertedBatch]:
        if "inversions" not in self.cache:
            out = []
            n_b = -(-self.n_images // self.batch_size)
            for x in self._progress(self.batches(), "invert", n_b):
                xd = x.to(self.device)
                codes = self.inverter.invert(xd)
                y = resize_like(self.inverter.generate(codes), self.image_hw)
                out.append(InvertedBatch(x, codes.float().cpu(), y.float().cpu()))
            self.cache["inversions"] = out
        return self.cache["inversions"]

    def codes(self) -> torch.Tensor:
        return torch.cat([b.codes for b in self.inversions()])

    def reconstructions(self) -> torch.Tensor:
        return torch.cat([b.y for b in self.inversions()])

    def cached(self, key: str, build: Callable[[], Any]) -> Any:
        """Memoise expensive helpers (feature networks, reference statistics) across metrics."""
        if key not in self.cache:
            self.cache[key] = build()
        return self.cache[key]

    @property
    def generator(self):
        gen = getattr(self.inverter, "decoder", None)
        if gen is None:
            raise MetricUnavailable("this metric needs the inverter's generator (inverter.decoder)")
        return gen
