"""TEST-ONLY stand-ins for the pretrained files of ``e4e.weights.REGISTRY``: randomly initialised
networks saved under the registry's file names and in the official key layouts, so that the real
loaders (``e4e.identity``, ``e4e.losses``, ``metrics.perception``, ``e4e.checkpoints``) run on them.
Their values mean nothing. Write them only into a pytest temporary folder and point the registry
there with ``monkeypatch`` (``E4E_WEIGHTS`` / ``TORCH_HOME``), never into ``./weights`` or a cache.

``write_test_only_standins(folder, domain)`` writes what a real domain's paper pipeline looks for
(its StyleGAN2 generator, its identity network, the LPIPS-alex and FID Inception trunks); the single
writers are used by the loader tests (tests/test_metrics.py).
"""
from __future__ import annotations

from pathlib import Path

import torch

from e4e.weights import REGISTRY

#: config-f generators of the official files: (registry key, resolution, channel multiplier)
GENERATORS = {"ffhq": ("stylegan2_ffhq", 1024, 2), "cars": ("stylegan2_cars", 512, 2),
              "horse": ("stylegan2_horse", 256, 2), "church": ("stylegan2_church", 256, 2)}


def _path(folder: Path, key: str) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / REGISTRY[key].filename


def write_arcface(folder: Path, seed: int = 0) -> Path:
    """``model_ir_se50.pth``: IR-SE-50 ArcFace state dict (TreB1eN layout, 112 px input)."""
    from e4e.models.backbones import Backbone

    torch.manual_seed(seed)
    path = _path(folder, "ir_se50")
    torch.save(Backbone(input_size=112, num_layers=50, drop_ratio=0.6, mode="ir_se").state_dict(), path)
    return path


def write_moco(folder: Path, seed: int = 0) -> Path:
    """``moco_v2_800ep_pretrain.pt``: ``{'state_dict': module.encoder_q.* (+ projection head and a key
    encoder tensor, which the loader must skip), 'epoch': 800}`` as the facebookresearch/moco release."""
    import torchvision

    torch.manual_seed(seed)
    sd = torchvision.models.resnet50(weights=None).state_dict()
    sd = {f"module.encoder_q.{k}": v for k, v in sd.items() if not k.startswith("fc.")}
    sd.update({"module.encoder_q.fc.0.weight": torch.zeros(2048, 2048),
               "module.encoder_q.fc.2.weight": torch.zeros(128, 2048), "module.encoder_k.conv1.weight": torch.zeros(1)})
    path = _path(folder, "moco_v2")
    torch.save({"state_dict": sd, "epoch": 800}, path)
    return path


def write_inception(folder: Path, seed: int = 0) -> Path:
    """``pt_inception-2015-12-05-6726825d.pth``: pytorch-fid's FID InceptionV3 state dict (1008 classes)."""
    from pytorch_fid import inception as pfi

    torch.manual_seed(seed)
    sd = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None, init_weights=False).state_dict()
    path = _path(folder, "inception_fid")
    torch.save(sd, path)
    return path


def write_alexnet(folder: Path, seed: int = 0) -> Path:
    """``alexnet-owt-7be5be79.pth``: torchvision AlexNet state dict (the LPIPS-alex trunk)."""
    import torchvision

    torch.manual_seed(seed)
    path = _path(folder, "alexnet")
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), path)
    return path


def write_generator(folder: Path, domain: str, seed: int = 0) -> Path:
    """``stylegan2-<domain>-config-f.pt``: a rosinality-format file (``g_ema`` + ``latent_avg``, as
    rosinality's ``convert_weight.py`` writes the official ones) of a random StyleGAN2 at the domain's
    real resolution, style_dim 512, 8 mapping layers and channel multiplier."""
    from e4e.checkpoints import save_generator
    from e4e.models.stylegan2 import Generator

    key, size, cm = GENERATORS[domain]
    torch.manual_seed(seed)
    g = Generator(size, style_dim=512, n_mlp=8, channel_multiplier=cm).eval()
    with torch.no_grad():
        latent_avg = g.mean_latent(1000, seed=seed).reshape(-1)
    return save_generator(g, _path(folder, key), latent_avg=latent_avg)


def write_test_only_standins(folder: Path, domain: str) -> dict[str, Path]:
    """Every file a real domain's training and evaluation look for, written into ``folder`` (files
    already there are kept): registry key -> path."""
    identity = ("ir_se50", write_arcface) if domain == "ffhq" else ("moco_v2", write_moco)
    writers = {GENERATORS[domain][0]: lambda f: write_generator(f, domain), identity[0]: identity[1],
               "alexnet": write_alexnet, "inception_fid": write_inception}
    out = {}
    for key, write in writers.items():
        path = Path(folder) / REGISTRY[key].filename
        out[key] = path if path.is_file() else write(Path(folder))
    return out
