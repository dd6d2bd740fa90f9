"""Registry of every external (pretrained) file the paper's pipeline uses, and the one place that
finds them on disk. Nothing is ever downloaded; a missing file raises ``WeightsMissingError``
naming the file, what it is for and where it comes from (docs/design.md §3).

Search order for a file: explicit path > ``$E4E_WEIGHTS`` > ``./weights`` > ``$TORCH_HOME/hub/checkpoints``
(the torch cache, for torchvision/pytorch-fid files).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path


class WeightsMissingError(FileNotFoundError):
    """A pretrained file needed by a loss or a metric is not on this machine."""


@dataclass(frozen=True)
class WeightsFile:
    key: str
    filename: str
    purpose: str
    source: str
    used_by: tuple[str, ...] = ()
    sha256: str | None = None
    torch_cache: bool = False  # looked up in $TORCH_HOME/hub/checkpoints too
    aliases: tuple[str, ...] = field(default_factory=tuple)


REGISTRY: dict[str, WeightsFile] = {}


def register(wf: WeightsFile) -> WeightsFile:
    REGISTRY[wf.key] = wf
    return wf


_E4E = "e4e official release (github.com/omertov/encoder4editing, README 'Pretrained Models')"
_PSP = "pSp official release (github.com/eladrich/pixel2style2pixel, README 'Pretrained Models')"
_RES = "ReStyle official release (github.com/yuval-alaluf/restyle-encoder, README 'Pretrained Models')"
for _k, _f, _p, _s, _u in [
    ("stylegan2_ffhq", "stylegan2-ffhq-config-f.pt", "StyleGAN2 FFHQ 1024 generator (rosinality format)",
     "rosinality/stylegan2-pytorch converted official weights (linked from the e4e README)", ("domain:ffhq",)),
    ("stylegan2_cars", "stylegan2-car-config-f.pt", "StyleGAN2 Stanford Cars 512 generator", _E4E, ("domain:cars",)),
    ("stylegan2_horse", "stylegan2-horse-config-f.pt", "StyleGAN2 LSUN horse 256 generator", _E4E, ("domain:horse",)),
    ("stylegan2_church", "stylegan2-church-config-f.pt", "StyleGAN2 LSUN church 256 generator", _E4E, ("domain:church",)),
    ("e4e_ffhq", "e4e_ffhq_encode.pt", "e4e encoder, FFHQ", _E4E, ("invert:e4e",)),
    ("e4e_cars", "e4e_cars_encode.pt", "e4e encoder, cars", _E4E, ("invert:e4e",)),
    ("e4e_horse", "e4e_horse_encode.pt", "e4e encoder, horse", _E4E, ("invert:e4e",)),
    ("e4e_church", "e4e_church_encode.pt", "e4e encoder, church", _E4E, ("invert:e4e",)),
    ("psp_ffhq", "psp_ffhq_encode.pt", "pSp encoder, FFHQ", _PSP, ("invert:psp",)),
    ("restyle_e4e_ffhq", "restyle_e4e_ffhq_encode.pt", "ReStyle-e4e encoder, FFHQ", _RES, ("invert:restyle_e4e",)),
    ("restyle_psp_ffhq", "restyle_psp_ffhq_encode.pt", "ReStyle-pSp encoder, FFHQ", _RES, ("invert:restyle_psp",)),
    ("ir_se50", "model_ir_se50.pth", "IR-SE50 ArcFace (identity loss, id_arcface, encoder init on faces)",
     "TreB1eN/InsightFace_Pytorch, as linked from the pSp/e4e README", ("loss:id", "metric:id_arcface")),
    ("moco_v2", "moco_v2_800ep_pretrain.pt", "MoCo-v2 ResNet-50 (identity loss / id_moco on cars, horses, churches)",
     "facebookresearch/moco 800-epoch release, as linked from the e4e README", ("loss:moco", "metric:id_moco")),
    ("arcface_onnx", "w600k_r50.onnx", "insightface ArcFace ONNX (id_insightface)",
     "insightface model zoo (buffalo_l pack), supplied by the user", ("metric:id_insightface",)),
]:
    register(WeightsFile(_k, _f, _p, _s, _u))
register(WeightsFile("inception_fid", "pt_inception-2015-12-05-6726825d.pth", "InceptionV3 FID weights (pytorch-fid)",
                     "mseitzer/pytorch-fid release v0.1.0", ("metric:fid_inception",), torch_cache=True))
register(WeightsFile("alexnet", "alexnet-owt-7be5be79.pth", "torchvision AlexNet trunk for LPIPS-alex",
                     "torchvision model zoo (download.pytorch.org)", ("loss:lpips", "metric:lpips_alex"), torch_cache=True))
register(WeightsFile("vgg16", "vgg16-397923af.pth", "torchvision VGG16 trunk for LPIPS-vgg (projection baselines)",
                     "torchvision model zoo (download.pytorch.org)", ("baseline:optim_*",), torch_cache=True))


def search_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("E4E_WEIGHTS"):
        dirs.append(Path(os.environ["E4E_WEIGHTS"]))
    dirs.append(Path("weights"))
    return dirs


def torch_cache_dir() -> Path:
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def candidates(key: str) -> list[Path]:
    wf = REGISTRY[key]
    dirs = search_dirs() + ([torch_cache_dir()] if wf.torch_cache else [])
    return [d / name for d in dirs for name in (wf.filename, *wf.aliases)]


def locate(key: str) -> Path | None:
    return next((p for p in candidates(key) if p.is_file()), None)


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def require(key: str, path: str | Path | None = None, verify: bool = False) -> Path:
    """Path of registered file ``key`` (or the explicit ``path``); WeightsMissingError if absent."""
    if key not in REGISTRY:
        raise KeyError(f"unknown weights key {key!r}; known: {sorted(REGISTRY)}")
    wf = REGISTRY[key]
    found = Path(path) if path is not None else locate(key)
    if found is None or not found.is_file():
        looked = [str(path)] if path is not None else [str(p) for p in candidates(key)]
        raise WeightsMissingError(
            f"missing pretrained file '{wf.filename}' ({wf.purpose}). It is needed by: "
            f"{', '.join(wf.used_by) or '-'}. Source: {wf.source}. Nothing is downloaded by this harness: "
            f"put the file in ./weights/ or $E4E_WEIGHTS. Looked in: {', '.join(looked)}")
    if verify and wf.sha256 and sha256_of(found) != wf.sha256:
        raise ValueError(f"{found}: sha256 does not match the registered '{wf.filename}'")
    return found


def status() -> list[dict]:
    rows = []
    for key, wf in REGISTRY.items():
        p = locate(key)
        rows.append({"key": key, "file": wf.filename, "present": p is not None, "path": str(p) if p else "",
                     "purpose": wf.purpose, "used_by": ", ".join(wf.used_by), "source": wf.source})
    return rows
