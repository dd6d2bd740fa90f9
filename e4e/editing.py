"""Latent editing: InterFaceGAN, GANSpace and SeFa (the three techniques of the e4e paper, §5/§6).

Direction formats (the official files load through the same code):
- InterFaceGAN (Shen et al. 2020): a unit direction in W, ``[1, D]`` (official FFHQ ``age.pt``,
  ``smile.pt``, ``pose.pt``; some saved on a CUDA device -> loaded with ``map_location='cpu'``), or a
  per-row direction ``[1, n_latent, D]``; ``.pt`` / ``.pth`` / ``.npy``.
- GANSpace (Härkönen et al. 2020): the official ``*_pca.pt`` dict ``{'comp': [K,1,D], 'mean': [1,D],
  'std': [K]}`` (``.npz`` files of the GANSpace repository, ``lat_comp``/``lat_mean``/``lat_stdev``,
  are converted). An edit is (component k, rows start:end, strength).
- SeFa (Shen & Zhou 2021): eigenvectors of the modulation weights of chosen layers.

W+ rows read by each modulated layer of the StyleGAN2 generator (``e4e.models.stylegan2``), used to
index SeFa weights correctly (``modulation_rows``):
    row 0: conv1;  row 1: to_rgb1 and convs.0;  row 2: convs.1;  row 3: to_rgbs.0 and convs.2;
    row 4: convs.3;  ...  row 2j+1: to_rgbs.(j-1) and convs.(2j);  row 2j+2: convs.(2j+1);
    last row (n_latent-1): to_rgbs.(last) only.
The official e4e ``editings/sefa.py`` reads conv1 for row 0 and ``convs[l-1]`` for row l (right), but
returns the shifted list ``l-1`` as the rows to edit, so its edits land one row early (row 0 is
never edited when asked for, and 'all' edits rows 0..num_layers-2). ``sefa_official_rows`` reproduces
that mapping, named as such; ``sefa_directions`` + ``apply_edit`` edit the rows whose weights were used.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple

import numpy as np
import torch

__all__ = ["load_direction", "direction_path", "direction_search_dirs", "load_ganspace_pca", "direction_offset",
           "apply_edit", "fit_interfacegan", "fit_boundary", "BoundaryFit", "BoundaryNotConverged",
           "ganspace_pca", "ganspace_edit", "GANSPACE_MODES",
           "modulation_rows", "sefa_directions", "sefa_official_rows"]

DIRECTION_SUFFIXES = (".pt", ".pth", ".npy", ".npz")


# =============================================================================================
# loading
# =============================================================================================
def _pca_from_mapping(d: dict) -> dict[str, torch.Tensor]:
    keys = {"comp": ("comp", "lat_comp"), "mean": ("mean", "lat_mean"), "std": ("std", "lat_stdev", "lat_std")}
    out = {}
    for k, names in keys.items():
        src = next((n for n in names if n in d), None)
        if src is None:
            raise ValueError(f"GANSpace PCA file has no {k!r} entry (looked for {names}); keys: {sorted(d)}")
        out[k] = torch.as_tensor(np.asarray(d[src])).float()
    return out


def _load_torch(path: Path):
    from e4e.checkpoints import load_checkpoint

    obj = load_checkpoint(path)  # weights_only: a file that pickles code is refused, never run (CheckpointError)
    if isinstance(obj, dict):
        return _pca_from_mapping(obj)
    return obj.float()


def _load_npz(path: Path):
    with np.load(path) as z:
        return _pca_from_mapping({k: z[k] for k in z.files})


_LOADERS: dict[str, Callable[[Path], Any]] = {
    ".pt": _load_torch, ".pth": _load_torch,
    ".npy": lambda p: torch.from_numpy(np.load(p)).float(),
    ".npz": _load_npz,
}


def direction_search_dirs(domain: str) -> list[Path]:
    """Where ``load_direction(domain, name)`` looks, in order: ``$E4E_DIRECTIONS/<domain>``, the synth
    package assets, ``<weights>/directions/<domain>`` and the official e4e layout ``<weights>/editings/...``."""
    dirs: list[Path] = []
    if os.environ.get("E4E_DIRECTIONS"):
        dirs.append(Path(os.environ["E4E_DIRECTIONS"]) / domain)
    if domain == "synth":
        dirs.append(Path(__file__).resolve().parent / "synth" / "assets" / "directions")
        dirs.append(Path(__file__).resolve().parent / "synth" / "assets")
    from e4e.weights import search_dirs

    for w in search_dirs():
        dirs += [w / "directions" / domain, w / "editings" / "interfacegan_directions", w / "editings" / "ganspace_pca"]
    return dirs


def direction_path(domain: str, name: str) -> Path:
    cands = [d / f"{stem}{suf}" for d in direction_search_dirs(domain) for stem in (name, f"{domain}_{name}", f"{name}_pca")
             for suf in DIRECTION_SUFFIXES]
    found = next((p for p in cands if p.is_file()), None)
    if found is None:
        raise FileNotFoundError(f"no editing direction {name!r} for domain {domain!r}; looked in: "
                                f"{', '.join(sorted({str(p.parent) for p in cands}))}")
    return found


def load_direction(path_or_domain: str | Path, name: str | None = None):
    """A direction tensor (or a GANSpace PCA dict) from a file, or by ``(domain, name)``."""
    path = direction_path(str(path_or_domain), name) if name is not None else Path(path_or_domain)
    try:
        loader = _LOADERS[path.suffix.lower()]
    except KeyError:
        raise ValueError(f"{path}: unknown direction file type; known: {sorted(_LOADERS)}") from None
    if not path.is_file():
        raise FileNotFoundError(f"direction file {path} does not exist")
    return loader(path)


def load_ganspace_pca(path: str | Path) -> dict[str, torch.Tensor]:
    obj = load_direction(path)
    if not isinstance(obj, dict):
        raise ValueError(f"{path} is a direction tensor, not a GANSpace PCA dict")
    return obj


# =============================================================================================
# applying
# =============================================================================================
def _pca_component(pca: dict, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    comp = pca["comp"].reshape(pca["comp"].shape[0], -1)[index]
    std = pca["std"].reshape(-1)[index]
    return comp, std


def direction_offset(direction, n_latent: int, dim: int, rows: Iterable[int] | None = None) -> torch.Tensor:
    """Per-row unit-strength offset ``[1, n_latent, dim]`` for a direction:
    ``[D]``/``[1,D]`` (broadcast to every row), ``[n_latent,D]``/``[1,n_latent,D]`` (per row), or a
    GANSpace spec ``{'pca': dict or file, 'index': k, 'start': s, 'end': e}`` (std_k * comp_k on rows s:e).
    ``rows`` restricts the offset to those rows."""
    if isinstance(direction, dict):
        pca = direction["pca"]
        pca = load_ganspace_pca(pca) if isinstance(pca, (str, Path)) else pca
        comp, std = _pca_component(pca, int(direction["index"]))
        off = torch.zeros(1, n_latent, dim)
        off[:, int(direction.get("start", 0)):int(direction.get("end", n_latent))] = (std * comp).reshape(1, 1, dim)
    else:
        d = torch.as_tensor(direction).float()
        if d.numel() == dim:
            off = d.reshape(1, 1, dim).expand(1, n_latent, dim).clone()
        elif d.numel() == n_latent * dim:
            off = d.reshape(1, n_latent, dim).clone()
        else:
            raise ValueError(f"direction of shape {tuple(d.shape)} fits neither [1,{dim}] nor [1,{n_latent},{dim}]")
    if rows is not None:
        mask = torch.zeros(1, n_latent, 1)
        mask[:, list(rows)] = 1.0
        off = off * mask
    return off


def apply_edit(w_plus: torch.Tensor, direction, strength: float, rows: Iterable[int] | None = None) -> torch.Tensor:
    """``w_plus + strength * direction`` (InterFaceGAN / SeFa / additive GANSpace), optionally on ``rows``."""
    off = direction_offset(direction, w_plus.shape[1], w_plus.shape[2], rows).to(w_plus)
    return w_plus + strength * off


# =============================================================================================
# InterFaceGAN: fit a direction from labelled latents
# =============================================================================================
def _select_extremes(latents, labels, ratio):
    """Binary labels as given; continuous scores -> top / bottom ``ratio`` fraction (InterFaceGAN)."""
    uniq = torch.unique(labels)
    if uniq.numel() <= 2:
        return latents, (labels == uniq.max()).float()
    k = max(1, int(round(ratio * labels.numel())))
    order = torch.argsort(labels)
    neg, pos = order[:k], order[-k:]
    x = torch.cat([latents[pos], latents[neg]])
    y = torch.cat([torch.ones(k), torch.zeros(k)])
    return x, y


class BoundaryNotConverged(RuntimeError):
    """The boundary fit stopped before reaching its tolerance."""


class BoundaryFit(NamedTuple):
    normal: torch.Tensor   # unit normal [1, D], pointing towards increasing labels
    info: dict             # fit quality and settings (see ``fit_boundary``)


def _check(converged: bool, what: str, n_iter: int) -> None:
    if not converged:
        raise BoundaryNotConverged(f"{what} did not reach its tolerance ({n_iter} iterations); "
                                   "raise max_iter or loosen tol")


def _fit_svm(x, y, c=1.0, tol=1e-5, max_iter=-1):
    """Linear SVM, hinge loss + 0.5||w||^2, as InterFaceGAN (``sklearn.svm.SVC(kernel='linear')``;
    libsvm stops when the maximal KKT violation is below ``tol``, ``max_iter=-1``: no limit)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import SVC

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = SVC(kernel="linear", C=c, tol=tol, max_iter=max_iter).fit(x, y)
    n_iter = int(np.sum(clf.n_iter_))
    _check(clf.fit_status_ == 0, "SVC(kernel='linear')", n_iter)
    info = {"C": c, "tol": tol, "n_iter": n_iter, "n_support": int(clf.n_support_.sum())}
    return clf.coef_.ravel(), float(clf.intercept_[0]), info


def _fit_logistic(x, y, c=1.0, tol=1e-8, max_iter=10_000):
    """L2 logistic regression, C * sum log-loss + 0.5||w||^2 (sklearn, L-BFGS to gradient ``tol``)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = LogisticRegression(C=c, tol=tol, max_iter=max_iter).fit(x, y)
    n_iter = int(np.max(clf.n_iter_))
    _check(n_iter < max_iter, "LogisticRegression", n_iter)
    return clf.coef_.ravel(), float(clf.intercept_[0]), {"C": c, "tol": tol, "n_iter": n_iter}


def _fit_regression(x, y, ridge=1e-3):
    """Ridge least squares of the scores (closed form)."""
    xc, yc = x - x.mean(0), y - y.mean()
    w = np.linalg.solve(xc.T @ xc + ridge * len(x) * np.eye(x.shape[1]), xc.T @ yc)
    return w, float(y.mean() - x.mean(0) @ w), {"ridge": ridge, "n_iter": 0}


_FITTERS = {"svm": (_fit_svm, True), "logistic": (_fit_logistic, True), "regression": (_fit_regression, False)}


def _split(y: np.ndarray, holdout: float, seed: int, classify: bool):
    """Seeded train / held-out indices (per class for classifiers, as InterFaceGAN's split_ratio)."""
    rng = np.random.RandomState(seed)
    groups = [np.flatnonzero(y == v) for v in (0, 1)] if classify else [np.arange(len(y))]
    train, val = [], []
    for g in groups:
        g = rng.permutation(g)
        k = len(g) - int(round(holdout * len(g)))
        train.append(g[:k])
        val.append(g[k:])
    return np.concatenate(train), np.concatenate(val)


def fit_boundary(latents, labels, kind: str = "svm", ratio: float = 0.02, holdout: float = 0.3, seed: int = 0,
                 **kw) -> BoundaryFit:
    """InterFaceGAN boundary with its fit quality. ``kind``: 'svm' (linear SVM on the top/bottom
    ``ratio`` of scores, or on given binary labels; the official InterFaceGAN uses 2%), 'logistic'
    (same selection, logistic regression) or 'regression' (ridge least squares of the scores on all
    latents). Fitted on a seeded split of the points, the ``holdout`` fraction (InterFaceGAN: 0.3)
    held out; ``kw`` go to the fitter (``c``, ``tol``, ``max_iter``; ``ridge``). ``info``: kind, ratio,
    n_train, n_val, converged (always True: a fit that misses its tolerance raises
    ``BoundaryNotConverged``), n_iter, C / tol, train_accuracy and val_accuracy (classifiers) or
    val_corr (regression: correlation of projection and score on the held-out points)."""
    try:
        fit, classify = _FITTERS[kind]
    except KeyError:
        raise ValueError(f"unknown InterFaceGAN fit {kind!r}; known: {sorted(_FITTERS)}") from None
    x = torch.as_tensor(latents).double().reshape(len(latents), -1)
    y = torch.as_tensor(labels).double().reshape(-1)
    if classify:
        x, y = _select_extremes(x, y, ratio)
    x, y = x.double().numpy(), y.double().numpy()
    tr, va = _split(y, holdout, seed, classify)
    w, b, info = fit(x[tr], y[tr], **kw)
    info = {"kind": kind, "ratio": ratio if classify else None, "n_train": len(tr), "n_val": len(va),
            "converged": True, **info}
    if classify:
        acc = lambda i: float(np.mean((x[i] @ w + b > 0) == (y[i] > 0.5))) if len(i) else None  # noqa: E731
        info.update(train_accuracy=acc(tr), val_accuracy=acc(va))
    else:
        info["val_corr"] = float(np.corrcoef(x[va] @ w, y[va])[0, 1]) if len(va) > 1 else None
    normal = torch.from_numpy(w / np.linalg.norm(w)).float().reshape(1, -1)
    return BoundaryFit(normal, info)


def fit_interfacegan(latents: torch.Tensor, labels: torch.Tensor, kind: str = "svm", ratio: float = 0.02,
                     **kw) -> torch.Tensor:
    """Unit normal ``[1, D]`` of a linear boundary in W separating the attribute (InterFaceGAN);
    ``fit_boundary(...).normal`` (see there)."""
    return fit_boundary(latents, labels, kind, ratio, **kw).normal


# =============================================================================================
# GANSpace
# =============================================================================================
@torch.no_grad()
def ganspace_pca(generator, n: int = 100_000, n_components: int = 80, seed: int = 0,
                 batch: int = 10_000) -> dict[str, torch.Tensor]:
    """PCA of W = mapping(z) over ``n`` seeded samples (official GANSpace uses 10^6), in the official
    file format: ``comp`` [K,1,D] unit rows (sign: largest coordinate positive), ``mean`` [1,D],
    ``std`` [K] (standard deviation of W along each component)."""
    g = torch.Generator().manual_seed(seed)
    dev = next(generator.parameters()).device
    ws = torch.cat([generator.mapping(torch.randn(min(batch, n - i), generator.style_dim, generator=g).to(dev)).double().cpu()
                    for i in range(0, n, batch)])
    mean = ws.mean(0, keepdim=True)
    _, s, vh = torch.linalg.svd(ws - mean, full_matrices=False)
    k = min(n_components, vh.shape[0])
    comp = vh[:k]
    sign = torch.sign(comp.gather(1, comp.abs().argmax(1, keepdim=True)))
    comp = comp * sign
    std = s[:k] / np.sqrt(max(n - 1, 1))
    return {"comp": comp.float().unsqueeze(1), "mean": mean.float(), "std": std.float()}


def _ganspace_add(w_plus, comp, std, mean, strength):
    return (strength * std * comp).expand(w_plus.shape[0], -1)


def _ganspace_set_official(w_plus, comp, std, mean, strength):
    """Official e4e ``editings/ganspace.get_delta``: the coordinate of row 0 along component k (in std
    units) is SET to ``strength``: delta = (strength - coord) * std * comp."""
    coord = ((w_plus[:, 0] - mean.reshape(1, -1)) * comp).sum(1, keepdim=True) / std
    return (strength - coord) * std * comp


GANSPACE_MODES = {"add": _ganspace_add, "set_official": _ganspace_set_official}


def ganspace_edit(w_plus: torch.Tensor, pca: dict, index: int, start: int, end: int, strength: float,
                  mode: str = "add") -> torch.Tensor:
    """GANSpace edit of rows ``start:end`` along component ``index``.
    'add': w += strength * std_k * comp_k (invertible, used by LEC);
    'set_official': the official e4e behaviour (see ``_ganspace_set_official``)."""
    try:
        delta_fn = GANSPACE_MODES[mode]
    except KeyError:
        raise ValueError(f"unknown GANSpace mode {mode!r}; known: {sorted(GANSPACE_MODES)}") from None
    comp, std = _pca_component(pca, index)
    comp, std = comp.to(w_plus).reshape(1, -1), std.to(w_plus)
    delta = delta_fn(w_plus, comp, std, pca["mean"].to(w_plus), strength)  # [B, D]
    out = w_plus.clone()
    out[:, start:end] += delta.unsqueeze(1)
    return out


# =============================================================================================
# SeFa
# =============================================================================================
def modulation_rows(generator) -> dict[str, int]:
    """Module name of every modulated conv -> the W+ row it reads (see the module docstring)."""
    rows = {"conv1": 0, "to_rgb1": 1}
    for i in range(len(generator.convs)):
        rows[f"convs.{i}"] = i + 1
    for j in range(len(generator.to_rgbs)):
        rows[f"to_rgbs.{j}"] = 2 * j + 3
    return rows


def _modulation_weight(generator, name: str) -> torch.Tensor:
    return generator.get_submodule(name).conv.modulation.weight.detach().float().cpu()  # [in_ch, D]


def sefa_directions(generator, rows: Iterable[int] | str = "all", include_torgb: bool = False
                    ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """SeFa: eigenvectors of A^T A, A = the stacked modulation weights (each output unit's weight
    vector normalised, as official SeFa) of the layers reading ``rows``. Returns (directions [D, D]
    as rows sorted by decreasing eigenvalue, eigenvalues [D], the rows to edit with them)."""
    mod_rows = modulation_rows(generator)
    if rows == "all":
        rows = sorted({r for n, r in mod_rows.items() if include_torgb or n.startswith(("conv1", "convs"))})
    rows = sorted(set(int(r) for r in rows))
    names = [n for n, r in mod_rows.items() if r in rows and (include_torgb or not n.startswith("to_rgb"))]
    if not names:
        raise ValueError(f"no modulated layer reads W+ rows {rows}")
    a = torch.cat([_modulation_weight(generator, n) for n in names]).double()
    a = a / a.norm(dim=1, keepdim=True)
    vals, vecs = torch.linalg.eigh(a.T @ a)
    order = torch.argsort(vals, descending=True)
    return vecs[:, order].T.float().contiguous(), vals[order].float(), rows


def sefa_official_rows(layers: Iterable[int] | str, num_layers: int) -> tuple[list[str], list[int]]:
    """What the official e4e ``editings/sefa.py`` does: (modulation weights it reads, W+ rows it edits).
    ``num_layers`` = number of styled convs (generator.num_layers). Kept to document its off-by-one."""
    if layers == "all":
        return ["conv1"] + [f"convs.{i}" for i in range(num_layers - 1)], list(range(num_layers - 1))
    layers = list(layers)
    shifted = [l - 1 for l in layers if l != 0]
    return (["conv1"] if 0 in layers else []) + [f"convs.{i}" for i in shifted], shifted
