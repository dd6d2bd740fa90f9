"""Perception metrics: FID and SWD of the reconstruction set against the real set (e4e paper §5:
inversions compared with the originals, at the evaluation size of the real images).

- ``frechet_distance(mu1, s1, mu2, s2)``: ||mu1-mu2||^2 + Tr(s1 + s2 - 2 (s1 s2)^1/2), the trace of the
  square root computed from the eigenvalues of the symmetric PSD matrix s1^1/2 s2 s1^1/2 (equal to the
  value of pytorch-fid's ``calculate_frechet_distance``; tested to 1e-6). Implemented once in
  ``e4e.stats`` (with ``feature_stats`` and ``fid_from_features``) and re-exported here.
- ``fid_inception``: pytorch-fid's InceptionV3 (pool3, 2048-d) with the FID weights
  ``pt_inception-2015-12-05-6726825d.pth`` read from the local file only (``e4e.weights``); images are
  quantised to 8 bits and scaled to [0, 1] as pytorch-fid reads PNG files; the network resizes to 299
  itself. Reference features (and statistics) of the real set are cached on disk, keyed by data path
  (or the images' content hash), resolution, count and the weights' sha256. Missing weights ->
  unavailable.
- ``fid_domain``: the same distance on the synth attribute network's penultimate features.
- ``swd``: sliced Wasserstein distance of ProGAN (Karras et al. 2018, ``metrics/sliced_wasserstein.py``):
  uint8 images, Laplacian pyramid with the 5x5 binomial filter /256 and mirror (reflect-101) borders
  as cv2.pyrDown/pyrUp, from the full resolution down to 16 px; per level 128 random 7x7x3
  neighbourhoods per image, drawn independently for each of the two sets (the ProGAN protocol);
  descriptors normalised per channel over all descriptors of the level (each set separately); 4
  repeats x 128 random unit directions; sorted projections, mean |A - B|; x1e3; keys ``swd_<res>``
  (res = level width) and ``swd_avg``. Deterministic: the real images' neighbourhoods are drawn from
  ``[seed, 0]``, the reconstructions' from ``[seed, 1]``, directions from ``seed + 1``. Its floor (two
  sets from one distribution, or even identical sets) is above 0: neighbourhood sampling noise.
- ``swd_shared``: the same with the neighbourhood positions shared by the two sets (image i of both
  sets sampled at the same positions; keys ``swd_shared_<res>``, ``swd_shared_avg``). Not ProGAN's
  protocol and not comparable to published SWD: it removes the sampling noise (identical sets give
  exactly 0, lower floor), useful for paired comparisons of reconstructions of the same images.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from e4e.fileio import to_uint8
from e4e.stats import feature_stats, fid_from_features, frechet_distance  # noqa: F401  (re-exported)
from e4e.weights import require, sha256_of
from metrics.registry import EvalContext, MetricResult, MetricUnavailable, register_metric, unavailable_on_missing


@torch.no_grad()
def extract_features(fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor | Iterable[torch.Tensor],
                     batch_size: int = 32, device="cpu") -> torch.Tensor:
    """Concatenated ``fn(batch)`` over ``images`` (a tensor split into batches or an iterable of batches)."""
    batches = images.split(batch_size) if torch.is_tensor(images) else images
    return torch.cat([fn(b.to(device)).flatten(1).double().cpu() for b in batches])


def quantize(x: torch.Tensor) -> torch.Tensor:
    """[-1,1] float -> the 8-bit values a PNG would hold, as float in [0, 255]."""
    return to_uint8(x).float()


# =============================================================================================
# FID with pytorch-fid's InceptionV3
# =============================================================================================
_SHA_CACHE: dict[tuple[str, float, int], str] = {}


def _file_sha(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime, st.st_size)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = sha256_of(path)
    return _SHA_CACHE[key]


def build_fid_inception(device="cpu", weights: str | Path | None = None):
    """pytorch-fid ``InceptionV3`` (FID variant, pool3) with the weights read from the local file:
    pytorch-fid's URL loader is replaced by a local ``torch.load`` while the model is built."""
    path = require("inception_fid", weights)
    from pytorch_fid import inception as pfi

    # pytorch-fid fetches its weights through ``load_state_dict_from_url``; while the model is built,
    # that name reads the local file instead (restored afterwards)
    fetch = pfi.load_state_dict_from_url
    pfi.load_state_dict_from_url = lambda *a, **k: torch.load(path, map_location="cpu", weights_only=True)
    try:
        model = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]], resize_input=True,
                                normalize_input=True, use_fid_inception=True)
    finally:
        pfi.load_state_dict_from_url = fetch
    return model.eval().to(device), path


def _inception_fn(model):
    return lambda x: model(quantize(x) / 255.0)[0]


def fid_cache_dir(ctx: EvalContext) -> Path:
    from e4e.fileio import cache_root

    return Path(ctx.option("fid_cache_dir", cache_root() / "fid_stats"))


def cached_reference_features(ctx: EvalContext, fn, weights_sha: str) -> np.ndarray:
    """``fn`` features of the real set (``ctx.batches()``), cached on disk (``metrics.cache``) in
    ``options['fid_cache_dir']``, keyed by the set (``data_path`` or the images' bytes), its size and
    the feature network's weights."""
    from metrics.cache import cached_on_disk

    source = ctx.data_path or hashlib.sha1(quantize(ctx.images).to(torch.uint8).numpy().tobytes()).hexdigest()
    desc = {"source": str(source), "hw": list(ctx.image_hw), "n": ctx.n_images, "weights": weights_sha}
    build = lambda: {"features": extract_features(fn, ctx.batches(), device=ctx.device)}  # noqa: E731
    return cached_on_disk(ctx, "fid_stats", desc, build, folder=fid_cache_dir(ctx))["features"].numpy()


@register_metric("fid_inception", needs=("inversions", "weights:inception_fid"))
def fid_inception(ctx: EvalContext) -> MetricResult:
    """FID (pytorch-fid InceptionV3 pool3) of reconstructions vs the real images."""
    with unavailable_on_missing("fid_inception"):
        model, wpath = ctx.cached("fid_inception_net", lambda: build_fid_inception(ctx.device))
    fn = _inception_fn(model)
    ref = cached_reference_features(ctx, fn, _file_sha(Path(wpath)))
    rec = extract_features(fn, (b.y for b in ctx.inversions()), device=ctx.device)
    return MetricResult({"fid_inception": fid_from_features(ref, rec)})


# =============================================================================================
# FID on the synth attribute network
# =============================================================================================
def build_domain_features(device="cpu"):
    from e4e.identity import DomainIdentity

    net = DomainIdentity().to(device)
    return net.net.features


@register_metric("fid_domain", needs=("inversions", "attrnet"))
def fid_domain(ctx: EvalContext) -> MetricResult:
    """FID on the synth attribute network's penultimate features (reconstructions vs real)."""
    with unavailable_on_missing("fid_domain"):
        fn = ctx.cached("domain_features", lambda: build_domain_features(ctx.device))
    real = extract_features(fn, ctx.batches(), device=ctx.device)
    rec = extract_features(fn, (b.y for b in ctx.inversions()), device=ctx.device)
    return MetricResult({"fid_domain": fid_from_features(real, rec)})


# =============================================================================================
# SWD (ProGAN)
# =============================================================================================
_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])


def _filter(x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    """5x5 binomial filter /256 (times ``gain``), applied separably as weighted sums of shifted
    copies (faster than convolutions for 5 taps on CPU), mirror (reflect-101) borders
    (= scipy.ndimage 'mirror' = cv2 BORDER_DEFAULT)."""
    h, w = x.shape[-2:]
    taps = (_BINOMIAL / 16.0).tolist()
    x = F.pad(x, (2, 2, 2, 2), mode="reflect")
    x = sum(t * x[..., i:i + h, :] for i, t in enumerate(taps))
    return sum((t * gain) * x[..., :, i:i + w] for i, t in enumerate(taps))


def pyr_down(x: torch.Tensor) -> torch.Tensor:
    return _filter(x)[..., ::2, ::2]


def pyr_up(x: torch.Tensor, hw: tuple[int, int] | None = None) -> torch.Tensor:
    b, c, h, w = x.shape
    up = x.new_zeros(b, c, 2 * h, 2 * w)
    up[..., ::2, ::2] = x
    out = _filter(up, 4.0)
    return out if hw is None else out[..., :hw[0], :hw[1]]


def swd_levels(h: int, w: int, min_res: int = 16) -> int:
    n = 1
    while min(h, w) // 2 ** n >= min_res:
        n += 1
    return n


def laplacian_pyramid(x: torch.Tensor, n_levels: int) -> list[torch.Tensor]:
    """[finest band-pass, ..., coarsest Gaussian level] (ProGAN ``generate_laplacian_pyramid``)."""
    pyr = [x]
    for _ in range(1, n_levels):
        pyr.append(pyr_down(pyr[-1]))
        pyr[-2] = pyr[-2] - pyr_up(pyr[-1], pyr[-2].shape[-2:])
    return pyr


def _positions(n_images: int, n_levels: int, shapes, per_image: int, half: int, seed: int):
    rng = np.random.RandomState(seed)
    out = []
    for lvl in range(n_levels):
        h, w = shapes[lvl]
        ys = rng.randint(half, h - half, size=(n_images, per_image))
        xs = rng.randint(half, w - half, size=(n_images, per_image))
        out.append((torch.from_numpy(ys), torch.from_numpy(xs)))
    return out


def _patches(level: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor, half: int) -> torch.Tensor:
    """[B,C,H,W] + positions [B,P] -> descriptors [B*P, C, 2h+1, 2h+1]."""
    b, c = level.shape[:2]
    off = torch.arange(-half, half + 1)
    yy = (ys[..., None] + off)[:, :, None, :, None]          # [B,P,1,K,1]
    xx = (xs[..., None] + off)[:, :, None, None, :]          # [B,P,1,1,K]
    bi = torch.arange(b).view(b, 1, 1, 1, 1)
    ci = torch.arange(c).view(1, 1, c, 1, 1)
    return level[bi, ci, yy, xx].reshape(-1, c, 2 * half + 1, 2 * half + 1)


def swd_descriptors(batches: Iterable[torch.Tensor], n_images: int, hw: tuple[int, int], seed=0,
                    per_image: int = 128, nhood: int = 7, min_res: int = 16) -> list[torch.Tensor]:
    """Normalised descriptors per level ([N*per_image, 3*nhood*nhood] each) of images in [-1, 1];
    neighbourhood positions from ``np.random.RandomState(seed)`` (an int or a list of ints)."""
    n_levels = swd_levels(*hw, min_res=min_res)
    shapes = [(-(-hw[0] // 2 ** i), -(-hw[1] // 2 ** i)) for i in range(n_levels)]
    half = nhood // 2
    pos = _positions(n_images, n_levels, shapes, per_image, half, seed)
    per_level: list[list[torch.Tensor]] = [[] for _ in range(n_levels)]
    start = 0
    for x in batches:
        pyr = laplacian_pyramid(quantize(x), n_levels)  # float32, as ProGAN
        sl = slice(start, start + x.shape[0])
        for lvl, band in enumerate(pyr):
            per_level[lvl].append(_patches(band, pos[lvl][0][sl], pos[lvl][1][sl], half))
        start += x.shape[0]
    if start != n_images:
        raise ValueError(f"expected {n_images} images, got {start}")
    out = []
    for descs in per_level:
        d = torch.cat(descs).double()
        d = d - d.mean(dim=(0, 2, 3), keepdim=True)
        std = d.std(dim=(0, 2, 3), keepdim=True, unbiased=False)
        d = d / torch.where(std > 0, std, torch.ones_like(std))
        out.append(d.reshape(d.shape[0], -1).float())
    return out


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, rng: np.random.RandomState, repeats: int = 4,
                       dirs_per_repeat: int = 128) -> float:
    """Mean over ``repeats`` x ``dirs_per_repeat`` random unit directions of mean |sort(A d) - sort(B d)|."""
    if a.shape != b.shape:
        raise ValueError(f"SWD needs equally many descriptors: {tuple(a.shape)} vs {tuple(b.shape)}")
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)  # numpy sorts columns much faster
    results = []
    for _ in range(repeats):
        dirs = rng.standard_normal((a.shape[1], dirs_per_repeat))
        dirs = (dirs / np.sqrt((dirs ** 2).sum(0, keepdims=True))).astype(np.float32)
        pa, pb = np.sort(a @ dirs, axis=0), np.sort(b @ dirs, axis=0)
        results.append(float(np.abs(pa - pb).mean(dtype=np.float64)))
    return float(np.mean(results))


def swd_sets(a_batches, b_batches, n_images: int, hw: tuple[int, int], seed: int = 0, shared: bool = False,
             prefix: str = "swd", **kw) -> dict[str, float]:
    """SWD between two image sets (iterables of [B,3,H,W] batches in [-1,1], same count). ``shared``:
    both sets sampled at the same neighbourhood positions (``swd_shared``); else each set draws its
    own (ProGAN). Keys ``<prefix>_<res>`` per level and ``<prefix>_avg``."""
    da = swd_descriptors(a_batches, n_images, hw, [seed, 0], **kw)
    db = swd_descriptors(b_batches, n_images, hw, [seed, 0 if shared else 1], **kw)
    rng = np.random.RandomState(seed + 1)
    out = {}
    for lvl, (a, b) in enumerate(zip(da, db)):
        out[f"{prefix}_{-(-hw[1] // 2 ** lvl)}"] = sliced_wasserstein(a, b, rng) * 1e3
    out[f"{prefix}_avg"] = float(np.mean(list(out.values())))
    return out


def _swd_metric(ctx: EvalContext, shared: bool, prefix: str) -> MetricResult:
    if min(ctx.image_hw) < 16:
        raise MetricUnavailable(f"{prefix} needs images of at least 16 px, got {ctx.image_hw}")
    seed = int(ctx.option("swd_seed", ctx.seed))
    recs = (b.y for b in ctx.inversions())
    return MetricResult(swd_sets(ctx.batches(), recs, ctx.n_images, ctx.image_hw, seed, shared=shared, prefix=prefix))


@register_metric("swd", needs=("inversions",))
def swd(ctx: EvalContext) -> MetricResult:
    """ProGAN sliced Wasserstein distance (independent neighbourhoods per set), reconstructions vs real (x1e3)."""
    return _swd_metric(ctx, shared=False, prefix="swd")


@register_metric("swd_shared", needs=("inversions",))
def swd_shared(ctx: EvalContext) -> MetricResult:
    """SWD with neighbourhood positions shared by both sets (paired, lower floor; not ProGAN's protocol)."""
    return _swd_metric(ctx, shared=True, prefix="swd_shared")
