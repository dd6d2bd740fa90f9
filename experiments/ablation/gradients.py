"""Each loss term's share of the encoder's gradient, on a trained member's final training state.

``gradient_shares(out_dir)`` rebuilds the member's trainer from ``<out_dir>/config.yaml``, restores
``last.pt`` (encoder, latent D), puts every W+ offset on (the end of the progressive schedule) and,
over ``n_batches`` training batches, back-propagates each weighted term on its own:
- ``grad_norm_<term>``: the mean norm of its gradient over the encoder's trainable parameters;
- ``grad_share_<term>``: that norm over the sum of every term's norm;
- ``loss_<term>``: the weighted term's mean value;
- ``d_acc_real`` / ``d_acc_fake``: the final latent D's accuracy on W samples / on the encoder's codes.
Terms: l2, lpips (the domain perceptual loss), id, delta_reg, adv (those the member has).
"""
from __future__ import annotations

from pathlib import Path

import torch

from e4e import config as C
from e4e import losses as L


def _resolve(cfg, workdir: Path) -> None:
    for key in ("train_dir", "val_dir"):
        value = getattr(cfg.data, key)
        if value and not Path(value).is_absolute():
            setattr(cfg.data, key, str(workdir / value))
    if cfg.model.generator and not Path(cfg.model.generator).is_absolute() and (workdir / cfg.model.generator).exists():
        cfg.model.generator = str(workdir / cfg.model.generator)


def _terms(tr, codes: torch.Tensor, x: torch.Tensor) -> dict[str, torch.Tensor]:
    cfg, recon, n = tr.cfg, tr.recon, tr.ctx.n_active
    y_hat = L.match_size(tr.inverter.generate(codes, noise_mode=cfg.model.noise_mode), x.shape[-2:])
    out = {}
    if recon.l2_lambda > 0:
        out["l2"] = recon.l2_lambda * L.l2_loss(y_hat, x)
    if recon.perceptual is not None:
        out["lpips"] = recon.lpips_lambda * recon.perceptual(y_hat, x)
    if recon.identity is not None:
        out["id"] = recon.id_lambda * recon.identity(y_hat, x)[0]
    if cfg.delta_reg.enabled and cfg.delta_reg.weight > 0:
        out["delta_reg"] = cfg.delta_reg.weight * L.delta_reg_loss(codes, n)
    if tr.disc is not None:
        out["adv"] = cfg.adversarial.weight * L.encoder_adv_loss(tr.disc, codes[:, :n])
    return out


def gradient_shares(out_dir: str | Path, n_batches: int = 4, workdir: str | Path = ".", seed: int = 0) -> dict[str, float]:
    from e4e.dist import DistInfo
    from e4e.train.build import set_stage, supports_progressive
    from e4e.train.trainer import Trainer, load_training_checkpoint

    out_dir, workdir = Path(out_dir), Path(workdir).resolve()
    cfg = C.build_config(out_dir / "config.yaml")
    cfg.out_dir = str(out_dir)
    _resolve(cfg, workdir)
    tr = Trainer(cfg, DistInfo(), torch.device("cpu"))
    if not tr.last_path.exists():
        raise FileNotFoundError(f"{tr.last_path}: no final training state to measure")
    tr._restore(load_training_checkpoint(tr.last_path))   # no config-hash check: the paths were made absolute
    if supports_progressive(tr.inverter):
        set_stage(tr.inverter, tr.n_latent - 1)
    tr.ctx.n_active = tr.n_latent
    torch.manual_seed(seed)
    sums: dict[str, float] = {}
    for _ in range(n_batches):
        x = tr.stream.next().to(tr.device)
        codes = tr.ctx.model(x)
        for name, term in _terms(tr, codes, x).items():
            grads = torch.autograd.grad(term, tr.params, retain_graph=True, allow_unused=True)
            norm = torch.stack([g.norm() for g in grads if g is not None]).norm()
            sums[f"grad_norm_{name}"] = sums.get(f"grad_norm_{name}", 0.0) + float(norm) / n_batches
            sums[f"loss_{name}"] = sums.get(f"loss_{name}", 0.0) + float(term.detach()) / n_batches
        if tr.disc is not None:
            with torch.no_grad():
                real = tr.generator.mapping(torch.randn(len(x), tr.generator.style_dim))
                fake = codes.detach().reshape(-1, codes.shape[-1])
                sums["d_acc_real"] = sums.get("d_acc_real", 0.0) + float((tr.disc(real) > 0).float().mean()) / n_batches
                sums["d_acc_fake"] = sums.get("d_acc_fake", 0.0) + float((tr.disc(fake) < 0).float().mean()) / n_batches
    total = sum(v for k, v in sums.items() if k.startswith("grad_norm_"))
    sums.update({k.replace("grad_norm_", "grad_share_"): v / total for k, v in list(sums.items())
                 if k.startswith("grad_norm_")})
    return dict(sorted(sums.items()))
