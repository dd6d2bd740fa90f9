"""Training losses of e4e (and pSp / ReStyle / the projection baselines), docs/design.md §1, §7.

- ``l2``: pixel MSE.
- ``LPIPSLoss``: the ``lpips`` package (linear layers shipped with it) over an AlexNet (or VGG16)
  trunk whose weights are read from the local torchvision file found by ``e4e.weights.require``;
  nothing is downloaded, a missing file raises ``WeightsMissingError``. ``net='domain'`` is the
  synth stand-in: an LPIPS-style distance (unit-normalised channels, squared difference, spatial
  mean, summed over layers, no learned weights) on the synth attribute net's feature maps.
- ``IdentityLoss``: 1 - cosine similarity of L2-normalised identity features (ArcFace / MoCo / the
  synth attribute net, ``e4e.identity.build_identity``), target features detached (official IDLoss /
  MocoLoss).
- ``delta_reg_loss``: official e4e L_d-reg: sum over active offsets i>=1 of the batch mean of the
  unsquared L2 norm ||w_i - w_0||.
- Latent adversarial: non-saturating ``softplus(-D(w))`` for the encoder, ``softplus(-D(real)) +
  softplus(D(fake))`` for D, R1 = mean over the batch of ||grad_w D(real)||^2.

``ReconstructionLoss`` assembles the image-space terms from a ``LossConfig``; a lambda of 0 leaves
the term (and the pretrained network it needs) out entirely.
"""
from __future__ import annotations

import re
from typing import Callable

import torch
from torch import nn
import torch.nn.functional as F

from e4e.weights import require


# ---------------------------------------------------------------------------------------------
# Pixel space
# ---------------------------------------------------------------------------------------------
class NonFiniteError(FloatingPointError):
    """A loss term or gradient became NaN / inf: the run stops at that step, nothing is written."""


def l2_loss(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(y_hat, y)


def match_size(y_hat: torch.Tensor, target_hw: tuple[int, int]) -> torch.Tensor:
    """Generator output -> the target's size the official way: average-pool to width x width, then
    centre-crop the rows (cars: 512x512 -> 256x256 -> rows 32:224 for a 192x256 input)."""
    h, w = target_hw
    if y_hat.shape[-2:] == (h, w):
        return y_hat
    if y_hat.shape[-1] != w:
        y_hat = F.adaptive_avg_pool2d(y_hat, (w, w))
    if h != y_hat.shape[-2]:
        top = (y_hat.shape[-2] - h) // 2
        y_hat = y_hat[..., top:top + h, :]
    return y_hat


# ---------------------------------------------------------------------------------------------
# LPIPS
# ---------------------------------------------------------------------------------------------
_LPIPS_TRUNK_KEY = {"alex": "alexnet", "vgg": "vgg16"}


def _load_lpips_trunk(model, net: str) -> None:
    """Copy torchvision ``features.<i>.*`` weights into lpips' ``net.slice<k>.<i>.*`` modules."""
    path = require(_LPIPS_TRUNK_KEY[net])
    sd = torch.load(path, map_location="cpu", weights_only=True)
    target = model.net.state_dict()
    mapped = {}
    for name in target:
        m = re.fullmatch(r"slice\d+\.(\d+)\.(weight|bias)", name)
        if m is None:
            continue
        src = f"features.{m.group(1)}.{m.group(2)}"
        if src not in sd:
            raise ValueError(f"{path}: no tensor {src!r} for LPIPS-{net} trunk parameter {name!r}")
        if sd[src].shape != target[name].shape:
            raise ValueError(f"{path}: {src} has shape {tuple(sd[src].shape)}, LPIPS-{net} expects "
                             f"{tuple(target[name].shape)}")
        mapped[name] = sd[src]
    missing = [k for k in target if k not in mapped]
    if missing:
        raise ValueError(f"{path}: LPIPS-{net} trunk parameters not found in the file: {missing}")
    model.net.load_state_dict(mapped, strict=True)


class LPIPSLoss(nn.Module):
    """LPIPS distance, inputs in [-1, 1]; returns the batch mean. Frozen, always in eval mode."""

    def __init__(self, net: str = "alex"):
        super().__init__()
        if net not in _LPIPS_TRUNK_KEY:
            raise ValueError(f"LPIPS net must be one of {sorted(_LPIPS_TRUNK_KEY)}, got {net!r}")
        import lpips

        require(_LPIPS_TRUNK_KEY[net])  # fail before building anything if the trunk is absent
        # pnet_rand=True: torchvision builds an un-initialised trunk (no download); lpips loads its own
        # shipped linear layers (pretrained=True); the trunk comes from the local file below.
        self.model = lpips.LPIPS(pretrained=True, net=net, pnet_rand=True, verbose=False)
        _load_lpips_trunk(self.model, net)
        self.model.eval().requires_grad_(False)
        self.net_name = net

    def train(self, mode: bool = True):  # stays in eval mode (dropout off)
        return super().train(False)

    def per_image(self, y_hat, y):
        return self.model(y_hat, y, normalize=False).flatten()

    def forward(self, y_hat, y):
        return self.per_image(y_hat, y).mean()


class FeatureDistance(nn.Module):
    """LPIPS-style distance on a feature extractor returning a list of maps (no learned weights):
    per layer, channels unit-normalised, squared difference averaged over space and summed over
    channels, then summed over layers. Used with the synth attribute net (``lpips_net='domain'``)."""

    def __init__(self, features: Callable[[torch.Tensor], list[torch.Tensor]], name: str = "domain"):
        super().__init__()
        self.features = features
        self.net_name = name
        if isinstance(features, nn.Module):
            features.eval().requires_grad_(False)

    def train(self, mode: bool = True):
        return super().train(False)

    @staticmethod
    def _unit(x, eps=1e-10):
        return x / (x.pow(2).sum(1, keepdim=True).sqrt() + eps)

    def per_image(self, y_hat, y):
        fa, fb = self.features(y_hat), self.features(y)
        d = 0.0
        for a, b in zip(fa, fb):
            diff = (self._unit(a) - self._unit(b)).pow(2)
            d = d + (diff.sum(1).mean((-2, -1)) if diff.ndim == 4 else diff.sum(1))
        return d

    def forward(self, y_hat, y):
        return self.per_image(y_hat, y).mean()


def _domain_feature_distance(device):
    from e4e.identity import build_identity

    net = build_identity("domain", device)
    feats = getattr(net, "feature_maps", None)
    if feats is None:
        raise ValueError("lpips_net='domain' needs the synth identity network to expose feature_maps(x) -> list")
    return FeatureDistance(feats, "domain")


def build_perceptual(net: str, device) -> nn.Module:
    """LPIPS ('alex' | 'vgg', WeightsMissingError when the trunk file is absent) or the synth
    attribute-net feature distance ('domain')."""
    builders = {"alex": lambda: LPIPSLoss("alex"), "vgg": lambda: LPIPSLoss("vgg"),
                "domain": lambda: _domain_feature_distance(device)}
    try:
        builder = builders[net]
    except KeyError:
        raise ValueError(f"unknown perceptual network {net!r}; known: {sorted(builders)}") from None
    return builder().to(device)


# ---------------------------------------------------------------------------------------------
# Identity
# ---------------------------------------------------------------------------------------------
class IdentityLoss(nn.Module):
    """1 - cos(f(y_hat), f(y)) with f an L2-normalised feature extractor; target side detached."""

    def __init__(self, net: nn.Module, kind: str = ""):
        super().__init__()
        self.net = net.eval().requires_grad_(False)
        self.kind = kind

    def train(self, mode: bool = True):
        return super().train(False)

    def similarity(self, y_hat, y):
        with torch.no_grad():
            fy = F.normalize(self.net(y).flatten(1).float(), dim=1)
        fh = F.normalize(self.net(y_hat).flatten(1).float(), dim=1)
        return (fh * fy).sum(1)

    def forward(self, y_hat, y):
        sim = self.similarity(y_hat, y)
        return (1 - sim).mean(), sim.mean().detach()


def build_identity_loss(kind: str, device) -> IdentityLoss:
    from e4e.identity import build_identity

    return IdentityLoss(build_identity(kind, device), kind).to(device)


# ---------------------------------------------------------------------------------------------
# Latent-space terms
# ---------------------------------------------------------------------------------------------
def delta_reg_loss(w_plus: torch.Tensor, n_active: int | None = None) -> torch.Tensor:
    """Official e4e L_d-reg on codes [B, n, D]: sum_{i=1}^{n_active-1} mean_b ||w_i - w_0||_2."""
    n_active = w_plus.shape[1] if n_active is None else n_active
    if n_active <= 1:
        return w_plus.new_zeros(())
    deltas = w_plus[:, 1:n_active] - w_plus[:, :1]
    return deltas.norm(p=2, dim=2).mean(0).sum()


# The adversarial terms, shared by the latent discriminator of e4e (codes), the synth GAN trainer and
# the distillation's patch discriminator (images).
def nonsaturating_loss(fake_pred: torch.Tensor) -> torch.Tensor:
    """The generator's (encoder's) non-saturating loss on the discriminator's scores of fakes."""
    return F.softplus(-fake_pred).mean()


def encoder_adv_loss(disc: nn.Module, w_rows: torch.Tensor) -> torch.Tensor:
    """Non-saturating loss on codes [B, k, D] (every row scored): mean softplus(-D(w))."""
    return nonsaturating_loss(disc(w_rows.reshape(-1, w_rows.shape[-1])))


def disc_loss(real_pred: torch.Tensor, fake_pred: torch.Tensor) -> torch.Tensor:
    """The discriminator's logistic loss: softplus(-D(real)) + softplus(D(fake)), each a mean."""
    return F.softplus(-real_pred).mean() + F.softplus(fake_pred).mean()


def r1_penalty(disc: nn.Module, real: torch.Tensor, with_pred: bool = False):
    """R1: mean over the batch of |dD(x)/dx|^2 at real inputs (codes or images). ``with_pred``
    also returns D(x), so a caller can add ``0 * pred`` and give every parameter a (zero) gradient."""
    real = real.detach().requires_grad_(True)
    pred = disc(real)
    (grad,) = torch.autograd.grad(pred.sum(), real, create_graph=True)
    r1 = grad.pow(2).reshape(grad.shape[0], -1).sum(1).mean()
    return (r1, pred) if with_pred else r1


# ---------------------------------------------------------------------------------------------
# Image-space loss assembly
# ---------------------------------------------------------------------------------------------
class ReconstructionLoss(nn.Module):
    """Weighted sum of the active image-space terms. ``forward(y_hat, y) -> (loss, logs)`` where logs
    holds floats ``loss_l2``, ``loss_lpips``, ``loss_id``, ``id_similarity`` for the active terms."""

    def __init__(self, l2_lambda: float = 1.0, lpips_lambda: float = 0.0, id_lambda: float = 0.0,
                 perceptual: nn.Module | None = None, identity: IdentityLoss | None = None):
        super().__init__()
        if lpips_lambda > 0 and perceptual is None:
            raise ValueError("lpips_lambda > 0 needs a perceptual network")
        if id_lambda > 0 and identity is None:
            raise ValueError("id_lambda > 0 needs an identity network")
        self.l2_lambda, self.lpips_lambda, self.id_lambda = l2_lambda, lpips_lambda, id_lambda
        self.perceptual = perceptual if lpips_lambda > 0 else None
        self.identity = identity if id_lambda > 0 else None

    @classmethod
    def from_config(cls, loss_cfg, identity_kind: str, device, perceptual: nn.Module | None = None,
                    identity: IdentityLoss | None = None) -> "ReconstructionLoss":
        """Builds only the networks of active terms; a missing weights file raises WeightsMissingError."""
        if loss_cfg.lpips_lambda > 0 and perceptual is None:
            perceptual = build_perceptual(loss_cfg.lpips_net, device)
        if loss_cfg.id_lambda > 0 and identity is None:
            identity = build_identity_loss(identity_kind, device)
        return cls(loss_cfg.l2_lambda, loss_cfg.lpips_lambda, loss_cfg.id_lambda, perceptual, identity)

    def train(self, mode: bool = True):
        return super().train(False)

    @property
    def active_terms(self) -> list[str]:
        return [n for n, lam in (("l2", self.l2_lambda), ("lpips", self.lpips_lambda), ("id", self.id_lambda))
                if lam > 0]

    def forward(self, y_hat, y):
        y_hat = match_size(y_hat, y.shape[-2:])
        total = y_hat.new_zeros(())
        logs: dict[str, float] = {}
        if self.l2_lambda > 0:
            l2 = l2_loss(y_hat, y)
            total = total + self.l2_lambda * l2
            logs["loss_l2"] = float(l2.detach())
        if self.perceptual is not None:
            lp = self.perceptual(y_hat, y)
            total = total + self.lpips_lambda * lp
            logs["loss_lpips"] = float(lp.detach())
        if self.identity is not None:
            lid, sim = self.identity(y_hat, y)
            total = total + self.id_lambda * lid
            logs["loss_id"] = float(lid.detach())
            logs["id_similarity"] = float(sim)
        return total, logs
