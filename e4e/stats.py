"""Feature statistics and the Frechet distance (FID on any features), shared by the metrics
(``metrics.perception``) and the synth generator export's ``fid_domain`` (``e4e.synth.export``).

- ``frechet_distance(mu1, s1, mu2, s2)``: ||mu1-mu2||^2 + Tr(s1 + s2 - 2 (s1 s2)^1/2), the trace of the
  square root computed from the eigenvalues of the symmetric PSD matrix s1^1/2 s2 s1^1/2 (equal to the
  value of pytorch-fid's ``calculate_frechet_distance``; tested to 1e-6).
- ``fid_from_features(a, b)``: the same distance of two feature sets [N, D] (exact low-rank path when
  N < D).
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["feature_stats", "frechet_distance", "fid_from_features"]


def feature_stats(feats: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    f = _as_f64(feats)
    return f.mean(0), np.cov(f, rowvar=False)


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh((m + m.T) / 2)
    return (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    r1 = _sqrt_psd(s1)
    inner = r1 @ s2 @ r1
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def _as_f64(x) -> np.ndarray:
    return np.asarray(x.detach().cpu() if torch.is_tensor(x) else x, dtype=np.float64)


def fid_from_features(a, b) -> float:
    """Frechet distance of two feature sets [N, D]. With fewer samples than dimensions (the usual
    case for 2048-d Inception features) the covariances are low rank and Tr((s1 s2)^1/2) is computed
    exactly as the nuclear norm of A B^T (A, B the centred features / sqrt(n-1): the non-zero
    eigenvalues of A^T A B^T B are the squared singular values of A B^T), avoiding D x D
    decompositions."""
    a, b = _as_f64(a), _as_f64(b)
    if min(len(a), len(b)) >= a.shape[1]:
        return frechet_distance(*feature_stats(a), *feature_stats(b))
    mu1, mu2 = a.mean(0), b.mean(0)
    fa, fb = (a - mu1) / np.sqrt(len(a) - 1), (b - mu2) / np.sqrt(len(b) - 1)
    tr_covmean = np.linalg.svd(fa @ fb.T, compute_uv=False).sum()
    diff = mu1 - mu2
    return float(diff @ diff + (fa ** 2).sum() + (fb ** 2).sum() - 2 * tr_covmean)
