"""Identity feature networks shared by the training losses and the identity metrics.

``build_identity(kind, device='cpu', weights=None) -> nn.Module``: frozen, eval-mode networks mapping
images [B,3,H,W] in [-1, 1] to L2-normalised features [B,F]:

- ``arcface``: IR-SE-50 ArcFace from ``model_ir_se50.pth`` (pSp / e4e ``IDLoss``): resize to 256x256
  (adaptive average pooling) when needed, crop rows 35:223 and columns 32:220 (the face region of an
  FFHQ-aligned image), adaptive average pooling to 112x112, IR-SE-50, L2 normalisation.
- ``moco``: MoCo-v2 ResNet-50 from ``moco_v2_800ep_pretrain.pt`` (e4e ``MocoLoss``): ``state_dict`` keys
  ``module.encoder_q.*`` without the projection head ``fc``; input resized to 224 with
  ``F.interpolate`` (nearest, as the official loss) and fed in [-1, 1] without ImageNet
  normalisation (as the official loss); pooled 2048-d features.
- ``domain``: the synth attribute network's penultimate features (``e4e.synth.attrnet``), the
  stand-in for ArcFace/MoCo on the embedded domain; also exposes ``feature_maps(x)`` for the
  LPIPS-style ``lpips_net='domain'`` loss.
- ``dlib``: dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat`` from the
  ``face-recognition-models`` package) on the face found by dlib's frontal detector with the
  68-landmark predictor; 128-d descriptors. Not differentiable: metric only. Rows are NaN where no
  face is found.

A missing weights file raises ``WeightsMissingError`` (``e4e.weights``); nothing is downloaded.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from e4e.align import dlib_model_file, face_recognition_models_dir  # noqa: F401  (re-exported)
from e4e.fileio import to_uint8_hwc
from e4e.weights import WeightsMissingError, require

__all__ = ["build_identity", "IDENTITY_KINDS", "ArcFaceIdentity", "MocoIdentity", "DomainIdentity",
           "DlibIdentity", "face_recognition_models_dir"]


class _Frozen(nn.Module):
    """Always eval mode, no parameter gradients (gradients still flow to the inputs)."""

    def freeze(self):
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        return self

    def train(self, mode: bool = True):
        return super().train(False)


# ---------------------------------------------------------------------------------------------
# ArcFace IR-SE-50
# ---------------------------------------------------------------------------------------------
def arcface_crop(x: torch.Tensor) -> torch.Tensor:
    """Official pSp/e4e IDLoss crop: 256x256 -> [35:223, 32:220] -> 112x112 (adaptive avg pooling)."""
    if x.shape[-2:] != (256, 256):
        x = F.adaptive_avg_pool2d(x, (256, 256))
    return F.adaptive_avg_pool2d(x[:, :, 35:223, 32:220], (112, 112))


class ArcFaceIdentity(_Frozen):
    def __init__(self, weights: str | Path | None = None):
        super().__init__()
        path = require("ir_se50", weights)
        from e4e.models import backbones

        self.net = backbones.Backbone(input_size=112, num_layers=50, drop_ratio=0.6, mode="ir_se")
        sd = torch.load(path, map_location="cpu", weights_only=True)
        self.net.load_state_dict(sd, strict=True)
        self.freeze()

    def forward(self, x):
        return F.normalize(self.net(arcface_crop(x)).flatten(1), dim=1)


# ---------------------------------------------------------------------------------------------
# MoCo-v2 ResNet-50
# ---------------------------------------------------------------------------------------------
MOCO_PREFIX = "module.encoder_q."


class MocoIdentity(_Frozen):
    def __init__(self, weights: str | Path | None = None):
        super().__init__()
        path = require("moco_v2", weights)
        import torchvision

        resnet = torchvision.models.resnet50(weights=None)
        from e4e.checkpoints import load_checkpoint

        ckpt = load_checkpoint(path)  # weights_only, through the one loader (its allow-list)
        sd = ckpt.get("state_dict", ckpt)
        sd = {k[len(MOCO_PREFIX):]: v for k, v in sd.items()
              if k.startswith(MOCO_PREFIX) and not k.startswith(MOCO_PREFIX + "fc.")}
        missing, unexpected = resnet.load_state_dict(sd, strict=False)
        if set(missing) != {"fc.weight", "fc.bias"} or unexpected:
            raise ValueError(f"{path}: not a MoCo-v2 ResNet-50 checkpoint (missing {sorted(missing)[:5]}, "
                             f"unexpected {sorted(unexpected)[:5]})")
        self.net = nn.Sequential(*list(resnet.children())[:-1])  # drop fc; ends with global avg pool
        self.freeze()

    def forward(self, x):
        x = F.interpolate(x, size=224)  # official MocoLoss: nearest resize, inputs left in [-1, 1]
        return F.normalize(self.net(x).flatten(1), dim=1)


# ---------------------------------------------------------------------------------------------
# synth attribute network
# ---------------------------------------------------------------------------------------------
class DomainIdentity(_Frozen):
    """AttrNet penultimate features (the synth stand-in for ArcFace / MoCo / Inception); AttrNet
    resizes its input to 64 px itself."""

    def __init__(self, weights: str | Path | None = None):
        super().__init__()
        from e4e.synth.attrnet import load_attrnet

        try:
            self.net = load_attrnet(weights)
        except FileNotFoundError as exc:
            raise WeightsMissingError(str(exc)) from exc
        self.freeze()

    def forward(self, x):
        return F.normalize(self.net.features(x).flatten(1), dim=1)

    def feature_maps(self, x) -> list[torch.Tensor]:
        """Activations of every convolution of the trunk (for the LPIPS-style synth perceptual loss)."""
        own = getattr(self.net, "feature_maps", None)
        if callable(own):
            return list(own(x))
        maps: list[torch.Tensor] = []
        hooks = [m.register_forward_hook(lambda _m, _i, o: maps.append(o))
                 for m in self.net.modules() if isinstance(m, nn.Conv2d)]
        try:
            self.net.features(x)
        finally:
            for h in hooks:
                h.remove()
        return maps


# ---------------------------------------------------------------------------------------------
# dlib face recognition (metric only)
# ---------------------------------------------------------------------------------------------
class DlibIdentity(_Frozen):
    """128-d dlib face descriptors (L2-normalised here); NaN rows where no face is detected.
    ``upsample``: detector upsampling steps (1 finds faces down to ~40 px)."""

    def __init__(self, upsample: int = 1):
        super().__init__()
        from e4e.extras import require_extra

        dlib = require_extra("dlib", "faces", "the dlib identity network (id_dlib)")
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(str(dlib_model_file("shape_predictor_68_face_landmarks.dat")))
        self.recognizer = dlib.face_recognition_model_v1(str(dlib_model_file("dlib_face_recognition_resnet_model_v1.dat")))
        self.upsample = upsample

    def descriptor(self, img: np.ndarray) -> np.ndarray:
        """One uint8 RGB image -> 128-d descriptor of its largest face, or NaNs."""
        img = np.ascontiguousarray(img)
        dets = self.detector(img, self.upsample)
        if len(dets) == 0:
            return np.full(128, np.nan, dtype=np.float32)
        det = max(dets, key=lambda r: r.width() * r.height())
        shape = self.predictor(img, det)
        return np.asarray(self.recognizer.compute_face_descriptor(img, shape), dtype=np.float32)

    @torch.no_grad()
    def forward(self, x):
        feats = torch.from_numpy(np.stack([self.descriptor(im) for im in to_uint8_hwc(x)]))
        return feats / feats.norm(dim=1, keepdim=True)


# ---------------------------------------------------------------------------------------------
IDENTITY_KINDS: dict[str, Callable[..., nn.Module]] = {
    "arcface": lambda weights, device: ArcFaceIdentity(weights),
    "moco": lambda weights, device: MocoIdentity(weights),
    "domain": lambda weights, device: DomainIdentity(weights),
    "dlib": lambda weights, device: DlibIdentity(),
}


def build_identity(kind: str, device="cpu", weights: str | Path | None = None) -> nn.Module:
    """Frozen identity network ``kind`` on ``device``; WeightsMissingError if its file is absent."""
    try:
        builder = IDENTITY_KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown identity network {kind!r}; known: {sorted(IDENTITY_KINDS)}") from None
    return builder(weights, device).to(device)
