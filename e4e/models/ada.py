"""Import of NVlabs StyleGAN2-ADA network pickles (github.com/NVlabs/stylegan2-ada-pytorch,
``network-snapshot-*.pkl``) into this project's rosinality-format generator, without running code
from the file.

Safety model. ``pickle.load`` on such a file would ``exec`` the Python source stored in it: its
networks are ``torch_utils.persistence`` objects whose reconstructor runs ``meta.module_src``.
``SafeUnpickler.find_class`` resolves only the names in ``ALLOWED``, each to a function of this
module that builds plain data: the persistence reconstructor returns the stored class name and
attribute dict (``module_src`` is never read), storages load with ``torch.load(weights_only=True)``,
tensor records must lie inside their storage, numpy values only of numeric dtypes, ``EasyDict`` is
a plain dict. Any other global (``os.system``,
``builtins.exec``, an unknown class) or a persistent id raises ``UnsafePickleError`` before anything
is called, so a refused file runs nothing. Only ``G_ema``'s tensors and a few scalar attributes are
used; ``G``, ``D``, ``augment_pipe`` and ``training_set_kwargs`` are parsed as data and dropped.

Weight mapping (NVlabs name -> rosinality key; ``training/networks.py`` vs ``e4e.models.stylegan2``):

* ``mapping.fc{i}`` -> ``style.{i+1}``: both scale at run time (NVlabs ``weight_gain = lr/sqrt(in)``,
  ``bias_gain = lr``; rosinality ``EqualLinear(lr_mul=0.01)``); rescaled when the pickle's lr
  multiplier is not 0.01. ``normalize_2nd_moment`` == ``PixelNorm``; lrelu(0.2)*sqrt(2) both.
* ``synthesis.b4.const`` [C,4,4] -> ``input.input`` [1,C,4,4].
* ``SynthesisLayer`` -> ``StyledConv``: NVlabs convolves with the raw weight (demodulation absorbs
  the gain), rosinality multiplies by ``1/sqrt(in*k*k)``, so the weight is divided by that; affine
  (``bias_init=1``, lr 1) -> ``conv.modulation`` unchanged (same init and gain on both sides);
  ``noise_strength`` [] -> ``noise.weight`` [1]; ``noise_const`` [r,r] -> ``noises.noise_{k}``;
  ``bias`` -> ``activate.bias``. The 2x up conv (``conv0``: transposed conv, then the [1,3,3,1]
  filter with gain 4 and padding 1) is the same op as rosinality's ``conv_transpose2d`` + ``Blur``.
* ``ToRGBLayer`` -> ``ToRGB`` (no demodulation): NVlabs multiplies the styles by
  ``weight_gain = 1/sqrt(in)``, rosinality the weight by the same ``scale``; bias [3] -> [1,3,1,1].
* resample filters (4x4, sum 1) -> ``blur.kernel`` / ``upsample.kernel`` (x4, the upsampling gain).

Supported: unconditional (``c_dim=0``), RGB, ``architecture='skip'``, 3x3 convs, the [1,3,3,1]
filter, ``z_dim == w_dim``. Not reproduced: ``conv_clamp`` (the ADA configs clamp activations at
+-256; rosinality has no clamp, so outputs differ only where an activation exceeds that) and the
fp16 blocks (``num_fp16_res``; the converted generator runs in float32 like NVlabs'
``force_fp32=True``).
"""
from __future__ import annotations

import io
import math
import pickle
from pathlib import Path

import numpy as np
import torch

from e4e.checkpoints import CheckpointError, check_finite, generator_from_state_dict
from e4e.models.stylegan2 import BLUR_KERNEL, Generator
from e4e.ops import make_kernel

LR_MLP = 0.01  # the rosinality mapping lr multiplier (Generator's lr_mlp default)
LATENT_AVG_MODES = ("auto", "w_avg", "mean")


class UnsafePickleError(CheckpointError):
    """The pickle names something outside the allow-list; nothing from it was called."""


# ---------------------------------------------------------------------------------------------
# restricted unpickling
# ---------------------------------------------------------------------------------------------
class Persistent:
    """A ``torch_utils.persistence`` object as data: the class name and its ``__dict__``."""

    def __init__(self, class_name: str, state: dict):
        self.class_name, self.state = class_name, state

    def __repr__(self):
        return f"Persistent({self.class_name})"


class EasyDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict``: a plain dict."""


def _persistent(meta):
    if not (isinstance(meta, dict) and meta.get("type") == "class" and isinstance(meta.get("class_name"), str)
            and isinstance(meta.get("state"), dict)):
        raise UnsafePickleError("malformed torch_utils.persistence object (expected meta with type 'class', "
                                "class_name and a state dict)")
    return Persistent(meta["class_name"], dict(meta["state"]))


def _storage(data):
    if not isinstance(data, (bytes, bytearray)):
        raise UnsafePickleError("torch storage payload is not bytes")
    storage = torch.load(io.BytesIO(bytes(data)), map_location="cpu", weights_only=True)
    if not isinstance(storage, torch.TypedStorage):
        raise UnsafePickleError(f"torch storage payload holds a {type(storage).__name__}, not a storage")
    return storage


def _ints(x) -> bool:
    return isinstance(x, (tuple, list)) and all(type(v) is int for v in x)


def _tensor(storage, offset, size, stride, *_ignored):  # requires_grad, hooks, metadata: dropped
    if not (isinstance(storage, torch.TypedStorage) and type(offset) is int and _ints(size) and _ints(stride)
            and len(size) == len(stride) and offset >= 0 and min((*size, *stride), default=0) >= 0):
        raise UnsafePickleError("malformed tensor record (_rebuild_tensor_v2 arguments)")
    last = offset + sum((n - 1) * st for n, st in zip(size, stride)) if all(size) else -1
    numel = storage._untyped_storage.nbytes() // storage.dtype.itemsize
    if last >= numel:  # torch would grow the storage with uninitialised memory
        raise UnsafePickleError(f"tensor record reaches past its storage ({last + 1} > {numel} elements)")
    return torch._utils._rebuild_tensor(storage, offset, tuple(size), tuple(stride))


def _parameter(data, *_ignored):  # a Parameter is kept as its tensor
    if not torch.is_tensor(data):
        raise UnsafePickleError("malformed parameter record")
    return data


def _np_dtype(spec, *_ignored):
    dtype = np.dtype(spec, False, True) if isinstance(spec, str) else None  # a copy: BUILD mutates it
    if dtype is None or dtype.kind not in "biuf":
        raise UnsafePickleError(f"numpy dtype {spec!r} is not numeric")
    return dtype


def _np_scalar(dtype, data=None, *_ignored):
    if not (isinstance(dtype, np.dtype) and dtype.kind in "biuf" and isinstance(data, bytes)
            and len(data) == dtype.itemsize):
        raise UnsafePickleError("malformed numpy scalar")
    return np.frombuffer(data, dtype=dtype)[0].item()


ALLOWED = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _persistent,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("dnnlib", "EasyDict"): EasyDict,
    ("torch._utils", "_rebuild_tensor_v2"): _tensor,
    ("torch._utils", "_rebuild_parameter"): _parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _parameter,
    ("torch.storage", "_load_from_bytes"): _storage,
    ("collections", "OrderedDict"): dict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("numpy", "dtype"): _np_dtype,
    ("numpy.core.multiarray", "scalar"): _np_scalar,
    ("numpy._core.multiarray", "scalar"): _np_scalar,
}


class SafeUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        safe = ALLOWED.get((module, name))
        if safe is None:
            raise UnsafePickleError(f"the pickle calls {module}.{name}, which is not part of a StyleGAN2-ADA "
                                    "network pickle; refused, nothing in it was executed")
        return safe

    def persistent_load(self, pid):
        raise UnsafePickleError("the pickle uses persistent ids (not a StyleGAN2-ADA network pickle); refused, "
                                "nothing in it was executed")


def read_network_pickle(path) -> dict:
    """The pickle's top-level dict, networks as ``Persistent``; ``UnsafePickleError`` / ``CheckpointError``."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            data = SafeUnpickler(f).load()
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{p}: {e}") from None
    except CheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            RuntimeError, UnicodeDecodeError, OverflowError) as e:
        first = (str(e).splitlines() or [""])[0][:160]
        raise CheckpointError(f"{p}: not a readable StyleGAN2-ADA network pickle ({type(e).__name__}: {first}); "
                              "nothing in it was executed") from None
    if not (isinstance(data, dict) and isinstance(data.get("G_ema"), Persistent)):
        keys = sorted(map(str, data))[:8] if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{p}: not a StyleGAN2-ADA network pickle (no G_ema network; top level: {keys})")
    return data


# ---------------------------------------------------------------------------------------------
# G_ema (NVlabs names) -> rosinality state dict
# ---------------------------------------------------------------------------------------------
def _tensors(obj: Persistent, prefix: str = "") -> dict:
    out = {}
    for group in ("_parameters", "_buffers"):
        for name, t in (obj.state.get(group) or {}).items():
            if t is not None:
                out[prefix + name] = t
    for name, child in (obj.state.get("_modules") or {}).items():
        if isinstance(child, Persistent):
            out.update(_tensors(child, f"{prefix}{name}."))
    return out


class _Source:
    """G_ema's tensors by NVlabs name; every one must be consumed by the conversion."""

    def __init__(self, g: Persistent, what: str):
        self.g, self.what = g, what
        self.tensors = _tensors(g)
        bad = [k for k, v in self.tensors.items() if not torch.is_tensor(v)]
        if bad:
            raise CheckpointError(f"{what}: G_ema entries that are not tensors: {bad[:4]}")

    def module(self, path: str) -> Persistent:
        obj = self.g
        for name in path.split("."):
            obj = (obj.state.get("_modules") or {}).get(name)
            if not isinstance(obj, Persistent):
                raise CheckpointError(f"{self.what}: G_ema has no module {path!r} (not a StyleGAN2-ADA generator)")
        return obj

    def attr(self, path: str, name: str, default=None):
        return (self.module(path) if path else self.g).state.get(name, default)

    def take(self, name: str, shape=None) -> torch.Tensor:
        if name not in self.tensors:
            raise CheckpointError(f"{self.what}: G_ema lacks the tensor {name!r}")
        t = self.tensors.pop(name).detach().float()
        if shape is not None and tuple(t.shape) != tuple(shape):
            raise CheckpointError(f"{self.what}: {name} has shape {tuple(t.shape)}, expected {tuple(shape)}")
        return t

    def require(self, ok: bool, message: str):
        if not ok:
            raise CheckpointError(f"{self.what}: unsupported StyleGAN2-ADA generator: {message}")


def _linear(src: _Source, sd: dict, nv: str, key: str, lr_target: float):
    w = src.take(f"{nv}.weight")
    b = src.take(f"{nv}.bias", (w.shape[0],))
    in_dim = w.shape[1]
    gain = float(src.attr(nv, "weight_gain", lr_target / math.sqrt(in_dim)))
    bias_gain = float(src.attr(nv, "bias_gain", lr_target))
    sd[f"{key}.weight"] = w * (gain * math.sqrt(in_dim) / lr_target)
    sd[f"{key}.bias"] = b * (bias_gain / lr_target)


def _kernel(src: _Source, name: str) -> torch.Tensor:
    f = src.take(name)
    ref = make_kernel(BLUR_KERNEL)
    src.require(f.shape == ref.shape and torch.allclose(f, ref, atol=1e-6), f"{name} is not the [1,3,3,1] filter")
    return f * 4  # rosinality stores the upsampling kernels with the gain factor**2


def _conv(src: _Source, sd: dict, nv: str, key: str, noise_key: str, res: int, up: bool = False):
    src.require(src.attr(nv, "activation", "lrelu") == "lrelu", f"{nv} activation is not lrelu")
    w = src.take(f"{nv}.weight")
    src.require(w.ndim == 4 and w.shape[2:] == (3, 3), f"{nv} is not a 3x3 convolution")
    out_ch, in_ch = w.shape[:2]
    sd[f"{key}.conv.weight"] = (w * math.sqrt(in_ch * 9)).unsqueeze(0)
    _linear(src, sd, f"{nv}.affine", f"{key}.conv.modulation", 1.0)
    sd[f"{key}.activate.bias"] = src.take(f"{nv}.bias", (out_ch,))
    if f"{nv}.noise_strength" in src.tensors:
        sd[f"{key}.noise.weight"] = src.take(f"{nv}.noise_strength").reshape(1)
        sd[noise_key] = src.take(f"{nv}.noise_const", (res, res))[None, None]
    else:  # use_noise=False
        sd[f"{key}.noise.weight"] = torch.zeros(1)
        sd[noise_key] = torch.zeros(1, 1, res, res)
    kernel = _kernel(src, f"{nv}.resample_filter") if f"{nv}.resample_filter" in src.tensors else None
    if up:
        sd[f"{key}.conv.blur.kernel"] = kernel if kernel is not None else make_kernel(BLUR_KERNEL) * 4


def _torgb(src: _Source, sd: dict, nv: str, key: str):
    w = src.take(f"{nv}.weight")
    src.require(w.ndim == 4 and w.shape[:1] == (3,) and w.shape[2:] == (1, 1), f"{nv} is not a 1x1 conv to RGB")
    in_ch = w.shape[1]
    gain = float(src.attr(nv, "weight_gain", 1 / math.sqrt(in_ch)))
    sd[f"{key}.conv.weight"] = (w * (gain * math.sqrt(in_ch))).unsqueeze(0)
    _linear(src, sd, f"{nv}.affine", f"{key}.conv.modulation", 1.0)
    sd[f"{key}.bias"] = src.take(f"{nv}.bias", (3,)).view(1, 3, 1, 1)


def convert_g_ema(g: Persistent, what: str = "G_ema") -> tuple[dict, dict]:
    """Rosinality ``g_ema`` state dict + facts about the source (``info``) from NVlabs' ``G_ema``."""
    src = _Source(g, what)
    src.require(int(src.attr("", "c_dim", 0) or 0) == 0, "conditional generator (c_dim > 0)")
    src.require(int(src.attr("", "img_channels", 3)) == 3, "img_channels is not 3")
    sd: dict[str, torch.Tensor] = {}
    n_mlp = len([k for k in src.tensors if k.startswith("mapping.fc") and k.endswith(".weight")])
    src.require(n_mlp > 0 and "mapping.embed.weight" not in src.tensors, "no (or a conditional) mapping network")
    for i in range(n_mlp):
        src.require(src.attr(f"mapping.fc{i}", "activation", "lrelu") == "lrelu", f"mapping.fc{i} is not lrelu")
        w_shape = tuple(src.tensors.get(f"mapping.fc{i}.weight", torch.empty(0)).shape)
        src.require(len(w_shape) == 2 and w_shape[0] == w_shape[1], "z_dim, w_dim and the mapping width differ")
        _linear(src, sd, f"mapping.fc{i}", f"style.{i + 1}", LR_MLP)
    w_avg = src.tensors.pop("mapping.w_avg", None)
    lr_mapping = float(src.attr("mapping.fc0", "bias_gain", LR_MLP))

    resolutions = sorted(int(k.split(".")[1][1:]) for k in src.tensors if k.startswith("synthesis.b")
                         and k.endswith(".conv1.weight"))
    src.require(bool(resolutions) and resolutions == [2 ** i for i in range(2, len(resolutions) + 2)],
                f"synthesis blocks {resolutions} are not 4, 8, ..., size")
    src.require(len(resolutions) >= 2, "resolution below 8 px")
    clamps, fp16 = set(), 0
    for j, r in enumerate(resolutions):
        b = f"synthesis.b{r}"
        src.require(src.attr(b, "architecture", "skip") == "skip", f"{b} architecture is not 'skip'")
        fp16 += bool(src.attr(b, "use_fp16", False))
        for layer in ("conv0", "conv1", "torgb"):
            if f"{b}.{layer}.weight" in src.tensors:
                clamps.add(src.attr(f"{b}.{layer}", "conv_clamp"))
        log = int(math.log2(r))
        if r == 4:
            const = src.take(f"{b}.const")
            src.require(const.ndim == 3 and const.shape[1:] == (4, 4), f"{b}.const is not [C, 4, 4]")
            sd["input.input"] = const.unsqueeze(0)
            _conv(src, sd, f"{b}.conv1", "conv1", "noises.noise_0", 4)
            _torgb(src, sd, f"{b}.torgb", "to_rgb1")
        else:
            _conv(src, sd, f"{b}.conv0", f"convs.{2 * j - 2}", f"noises.noise_{2 * log - 5}", r, up=True)
            _conv(src, sd, f"{b}.conv1", f"convs.{2 * j - 1}", f"noises.noise_{2 * log - 4}", r)
            _torgb(src, sd, f"{b}.torgb", f"to_rgbs.{j - 1}")
            sd[f"to_rgbs.{j - 1}.upsample.kernel"] = _kernel(src, f"{b}.resample_filter")
        src.tensors.pop(f"{b}.resample_filter", None)  # the b4 block's (unused there)
    left = sorted(src.tensors)
    src.require(not left, f"tensors with no rosinality counterpart: {left[:5]}")
    check_finite(sd, what)
    info = {"size": resolutions[-1], "n_mlp": n_mlp, "mapping_lr_multiplier": lr_mapping,
            "conv_clamp": next(iter(clamps - {None}), None), "fp16_blocks": fp16,
            "w_avg_beta": src.attr("mapping", "w_avg_beta")}
    return sd, {"info": info, "w_avg": w_avg}


# ---------------------------------------------------------------------------------------------
# public entry points
# ---------------------------------------------------------------------------------------------
def import_ada(path, latent_avg: str = "auto", n_samples: int = 10_000, seed: int = 0
               ) -> tuple[Generator, torch.Tensor, dict]:
    """(generator, latent_avg [D], metadata) from a StyleGAN2-ADA network pickle's ``G_ema``.

    ``latent_avg``: ``w_avg`` (the pickle's ``mapping.w_avg`` buffer, the moving average of w
    tracked in training, as rosinality's converter used TF's ``dlatent_avg``), ``mean`` (mean of
    the mapping network over ``n_samples`` z ~ N(0, I) drawn from ``torch.Generator().manual_seed(seed)``),
    ``auto`` (w_avg when the buffer exists and is finite and non-zero, else mean)."""
    if latent_avg not in LATENT_AVG_MODES:
        raise ValueError(f"latent_avg must be one of {LATENT_AVG_MODES}, got {latent_avg!r}")
    data = read_network_pickle(path)
    sd, extra = convert_g_ema(data["G_ema"], f"{path} (G_ema)")
    g = generator_from_state_dict(sd, f"{path} (G_ema, converted)").eval()
    w_avg = extra["w_avg"]
    usable = torch.is_tensor(w_avg) and w_avg.shape == (g.style_dim,) and bool(torch.isfinite(w_avg).all()) \
        and bool(w_avg.abs().sum() > 0)
    mode = ("w_avg" if usable else "mean") if latent_avg == "auto" else latent_avg
    if mode == "w_avg":
        if not usable:
            raise CheckpointError(f"{path}: the pickle has no usable mapping.w_avg buffer; use --latent-avg mean")
        avg = w_avg.detach().float().clone()
        source = {"method": "w_avg", "detail": "mapping.w_avg buffer of the pickle (moving average of w during "
                  f"training, w_avg_beta={extra['info']['w_avg_beta']})"}
    else:
        avg = g.mean_latent(n_samples, seed=seed)[0]
        source = {"method": "mapping_mean", "n_samples": int(n_samples), "seed": int(seed),
                  "detail": "mean of the mapping network over z = torch.randn(n, z_dim, "
                            "generator=torch.Generator().manual_seed(seed))"}
    source["w_avg_in_pickle"] = torch.is_tensor(w_avg)
    meta = {"source_file": Path(path).name, "network": "G_ema", **extra["info"],
            "ignored": sorted(str(k) for k in data if k != "G_ema")}
    g.latent_avg = avg
    return g, avg, {"latent_avg_source": source, "ada_import": meta}


def load_ada_generator(path, device="cpu", latent_avg: str = "auto") -> Generator:
    """``load_generator`` for ``.pkl`` files: the converted generator, ``latent_avg`` attached."""
    g, avg, meta = import_ada(path, latent_avg=latent_avg)
    g = g.to(device)
    g.latent_avg, g.import_metadata = avg.to(device), meta
    return g
