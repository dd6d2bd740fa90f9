"""Ground-truth editability on the synth domain (beyond the paper, docs/design.md §4): the paper could only
ask users whether edits of inverted real images look right; on synth an attribute network measures it.

``edit_<attr>`` (e.g. ``edit_smile``): the InterFaceGAN direction d of ``attr`` (unit vector in W,
``ctx.directions[attr]`` or the domain's direction file), strength s (``options['edit_strength']``,
default 3). For each test image: inversion y0 = G(E(x)), edit y1 = G(E(x) + s*d) (constant noise),
attributes a = AttrNet(.) in the attribute's own units, delta = a(y1) - a(y0). The same edit is applied
to ``options['edit_n_ref']`` (default 256) seeded generator samples w = mapping(z): the in-domain
reference, where editing works as well as it can.
- ``edit_<attr>_gain_raw``: mean delta_target / s (attribute units per unit of latent step);
  ``edit_<attr>_gain_ref``: the same on generator samples; ``edit_<attr>_gain`` = raw / ref
  (1 = the edit of an inverted real image is as effective as on the generator's own samples).
- ``edit_<attr>_leak``: mean over images of the mean over the other attributes of |delta_k| / std_k
  (std of attribute k over the reference samples); ``edit_<attr>_leak_ref`` on the reference.
- ``edit_<attr>_id``: cosine similarity of AttrNet penultimate features of y0 and y1 (identity
  drift; the target attribute changes these features too, so compare with ``edit_<attr>_id_ref``).
Per image: ``edit_<attr>_gain_raw``, ``edit_<attr>_leak``, ``edit_<attr>_id``.

``edit_fid_<direction>_<strength>`` (e.g. ``edit_fid_smile_3``; any domain with a generator and the
attribute net): edit realism, the ``fid_domain`` distance (attribute-net penultimate features) between
the edited inversions G(E(x) + s*d) of the test images (constant noise, at the evaluation size) and
``options['edit_fid_n_ref']`` (default 5000) plain generator samples G(mapping(z)) (z seeded by
``ctx.seed``; not edited). Edits of codes off W's manifold give unnatural images and raise it;
``edit_fid_<direction>_0`` is the unedited baseline. The samples' features are cached in ``ctx.cache``
and on disk as ``fid_inception``'s references (``options['fid_cache_dir']``), keyed by a digest of the
generator's weights, the seed, the count, the size and the feature network's digest.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from metrics.cache import cached_on_disk, generator_digest, module_digest, tensor_digest
from metrics.lec import edit_codes, edited_inversions, resolve_offset
from metrics.perception import build_domain_features, cached_reference_features, extract_features, fid_from_features
from metrics.registry import EvalContext, MetricResult, register_metric, resize_like, unavailable_on_missing


class AttributeProbe:
    """AttrNet wrapper: attributes [B,K] (original units) and L2-normalised features [B,F]."""

    def __init__(self, net, names: tuple[str, ...]):
        self.net, self.names = net.eval(), tuple(names)

    @torch.no_grad()
    def __call__(self, x) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net(x).float().cpu(), F.normalize(self.net.features(x).flatten(1).float(), dim=1).cpu()

    def index(self, attr: str) -> int:
        if attr not in self.names:
            raise KeyError(f"unknown synth attribute {attr!r}; the attribute net measures: {', '.join(self.names)}")
        return self.names.index(attr)


def load_probe(device="cpu") -> AttributeProbe:
    from e4e.synth import attrnet

    net = attrnet.load_attrnet(device=device)
    return AttributeProbe(net, getattr(net, "ATTRIBUTES", None) or attrnet.ATTRIBUTES)


@torch.no_grad()
def probe_batches(probe: AttributeProbe, images) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(attributes, features) of every image batch."""
    return [probe(y) for y in images]


def compare_probes(before, after) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(delta [N,K], cosine [N], attributes before [N,K]) from per-batch probe readings."""
    deltas = [a1 - a0 for (a0, _), (a1, _) in zip(before, after)]
    cosines = [(f0 * f1).sum(1) for (_, f0), (_, f1) in zip(before, after)]
    return torch.cat(deltas), torch.cat(cosines), torch.cat([a0 for a0, _ in before])


@torch.no_grad()
def reference_samples(generator, n: int, seed: int, batch: int = 64) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    dev = next(generator.parameters()).device
    z = torch.randn(n, generator.style_dim, generator=g)
    return [generator.mapping(c.to(dev)).unsqueeze(1).repeat(1, generator.n_latent, 1) for c in z.split(batch)]


def reference_readings(ctx: EvalContext, probe: AttributeProbe, n_ref: int, offset: torch.Tensor | None = None,
                       strength: float = 0.0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Probe readings (one (attributes, features) pair) of the ``n_ref`` seeded reference samples,
    edited by ``strength * offset`` when an offset is given. They do not depend on the inverter, so they
    are stored on disk (``metrics.cache``) keyed by the generator's and the attribute net's weights, the
    offset's bytes, the strength, the count, the seed and the device type: every grid member after the
    first reads them. The readings are those of the 64-sample batches, concatenated (same values)."""
    gen = ctx.generator

    def build() -> dict:
        codes = ctx.cached(f"edit_ref_codes:{n_ref}:{ctx.seed}", lambda: reference_samples(gen, n_ref, ctx.seed))
        if offset is not None:
            codes = [edit_codes(c, offset, strength) for c in codes]
        batches = probe_batches(probe, (gen.synthesis(c, noise_mode="const") for c in codes))
        return {"attrs": torch.cat([a for a, _ in batches]), "features": torch.cat([f for _, f in batches])}

    desc = {"generator": generator_digest(ctx), "probe": ctx.cached("attr_probe_digest", lambda: module_digest(probe.net)),
            "n": n_ref, "seed": ctx.seed, "offset": None if offset is None else tensor_digest(offset),
            "strength": float(strength), "device": torch.device(ctx.device).type}
    r = cached_on_disk(ctx, "edit_reference", desc, build)
    return [(r["attrs"], r["features"])]


def _leak(delta: torch.Tensor, std: torch.Tensor, target: int) -> torch.Tensor:
    others = [k for k in range(delta.shape[1]) if k != target]
    if not others:
        return torch.zeros(delta.shape[0])
    return (delta[:, others].abs() / std[others].clamp_min(1e-8)).mean(1)


@register_metric("edit_<attr>", needs=("inversions", "generator", "attrnet", "directions"))
def edit_attr(ctx: EvalContext, attr: str) -> MetricResult:
    """Ground-truth editability of attribute ``attr``: gain vs in-domain reference, leakage, identity."""
    with unavailable_on_missing(f"edit_{attr}"):
        probe = ctx.cached("attr_probe", lambda: load_probe(ctx.device))
    target = probe.index(attr)
    s = float(ctx.option("edit_strength", 3.0))
    offset = resolve_offset(ctx, attr)
    inv = ctx.inversions()
    n_ref = int(ctx.option("edit_n_ref", 256))
    # the unedited readings (reference samples and inversions) are shared by every edit_<attr>
    ref_before = ctx.cached(f"edit_ref_probe:{n_ref}:{ctx.seed}",
                            lambda: reference_readings(ctx, probe, n_ref))
    ref_after = reference_readings(ctx, probe, n_ref, offset, s)
    d_ref, cos_ref, a_ref = compare_probes(ref_before, ref_after)
    std = a_ref.std(0)

    inv_before = ctx.cached("inversion_probe", lambda: probe_batches(probe, (b.y.to(ctx.device) for b in inv)))
    inv_after = probe_batches(probe, (y.to(ctx.device) for y in edited_inversions(ctx, attr, s)))
    d_inv, cos_inv, _ = compare_probes(inv_before, inv_after)

    gain_raw = d_inv[:, target] / s
    gain_ref = float(d_ref[:, target].mean()) / s
    leak, leak_ref = _leak(d_inv, std, target), _leak(d_ref, std, target)
    p = f"edit_{attr}"
    values = {f"{p}_gain": float(gain_raw.mean()) / gain_ref if gain_ref != 0 else float("nan"),
              f"{p}_gain_raw": float(gain_raw.mean()), f"{p}_gain_ref": gain_ref,
              f"{p}_leak": float(leak.mean()), f"{p}_leak_ref": float(leak_ref.mean()),
              f"{p}_id": float(cos_inv.mean()), f"{p}_id_ref": float(cos_ref.mean())}
    per_image = {f"{p}_gain_raw": gain_raw.tolist(), f"{p}_leak": leak.tolist(), f"{p}_id": cos_inv.tolist()}
    return MetricResult(values, per_image)


# ---------------------------------------------------------------------------------------------
# edit realism: FID of edited inversions against plain generator samples
# ---------------------------------------------------------------------------------------------
class GeneratorSamples:
    """``n`` seeded plain generator samples G(mapping(z)) at the evaluation size, as the image source
    that ``perception.cached_reference_features`` reads (its on-disk key is ``data_path``: the
    generator's digest and the seed)."""

    def __init__(self, ctx: EvalContext, n: int):
        self.generator, self.n_images, self.seed = ctx.generator, n, ctx.seed
        self.image_hw, self.device, self.options = ctx.image_hw, ctx.device, ctx.options
        self.data_path = f"generator:{generator_digest(ctx)}:seed{self.seed}"

    def option(self, key: str, default):
        return self.options.get(key, default)

    @torch.no_grad()
    def batches(self):
        for w in reference_samples(self.generator, self.n_images, self.seed):
            yield resize_like(self.generator.synthesis(w, noise_mode="const"), self.image_hw)


def generator_reference_features(ctx: EvalContext, fn) -> np.ndarray:
    """``fn`` features of ``options['edit_fid_n_ref']`` (default 5000) generator samples; cached in
    ``ctx.cache`` and on disk (``perception.cached_reference_features``, keyed by the generator)."""
    n = int(ctx.option("edit_fid_n_ref", 5000))

    def build():
        net_sha = module_digest(getattr(fn, "__self__", fn))
        return cached_reference_features(GeneratorSamples(ctx, n), fn, net_sha)

    return ctx.cached(f"edit_fid_reference:{n}:{ctx.seed}", build)


@register_metric("edit_fid_<direction>_<strength>", needs=("inversions", "generator", "attrnet", "directions"))
def edit_fid(ctx: EvalContext, direction: str, strength: str) -> MetricResult:
    """Edit realism: fid_domain of edited inversions G(w + s d) vs plain generator samples."""
    name = f"edit_fid_{direction}_{strength}"
    with unavailable_on_missing(name):
        fn = ctx.cached("domain_features", lambda: build_domain_features(ctx.device))
    feats = extract_features(fn, edited_inversions(ctx, direction, strength), device=ctx.device)
    return MetricResult({name: fid_from_features(generator_reference_features(ctx, fn), feats)})
