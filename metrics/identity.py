"""Identity similarity between each input and its inversion: the mean cosine similarity of identity
features (e4e paper §5 uses ArcFace on faces; MoCo-v2 for the other domains as in its losses).

- ``id_arcface``: IR-SE-50 ``model_ir_se50.pth`` with the official crop (``e4e.identity``).
- ``id_moco``: MoCo-v2 ResNet-50 (cars, horses, churches).
- ``id_domain``: the synth attribute network's penultimate features.
- ``id_dlib``: dlib's face-recognition ResNet (works offline: the ``face-recognition-models`` package
  ships it) on the largest face found by dlib's detector in each image. Images where no face is
  found in the input or in the inversion get NaN per image; the mean is over the rest, and
  ``id_dlib_n_faces`` counts the pairs used. No pair at all -> unavailable.
- ``id_insightface``: an insightface ArcFace ONNX model supplied by the user (``w600k_r50.onnx`` in
  ./weights or ``$E4E_WEIGHTS``, or ``options['insightface_model']``), run by onnxruntime through
  ``insightface.model_zoo.get_model``; its input is the same fixed FFHQ face crop as ``id_arcface``
  (256 -> [35:223, 32:220] -> 112x112), as BGR uint8. No file -> unavailable.
"""
from __future__ import annotations

import numpy as np
import torch

from e4e.weights import require
from metrics.registry import EvalContext, MetricResult, MetricUnavailable, register_metric, unavailable_on_missing


def _cosine_metric(ctx: EvalContext, name: str, net) -> MetricResult:
    sims = []
    with torch.no_grad():
        for b in ctx.inversions():
            fx = net(b.x.to(ctx.device)).float()
            fy = net(b.y.to(ctx.device)).float()
            sims.append((fx * fy).sum(1).cpu())
    s = torch.cat(sims)
    finite = torch.isfinite(s)
    values = {name: float(s[finite].mean()) if finite.any() else float("nan")}
    return MetricResult(values, {name: s.tolist()})


def _network_metric(kind: str, name: str):
    def metric(ctx: EvalContext) -> MetricResult:
        from e4e.identity import build_identity

        with unavailable_on_missing(name):
            net = ctx.cached(f"identity:{kind}", lambda: build_identity(kind, ctx.device))
        return _cosine_metric(ctx, name, net)

    metric.__doc__ = f"Mean cosine similarity of {kind} identity features, input vs inversion."
    metric.__name__ = name
    return metric


id_arcface = register_metric("id_arcface", needs=("inversions", "weights:ir_se50"))(_network_metric("arcface", "id_arcface"))
id_moco = register_metric("id_moco", needs=("inversions", "weights:moco_v2"))(_network_metric("moco", "id_moco"))
id_domain = register_metric("id_domain", needs=("inversions", "attrnet"))(_network_metric("domain", "id_domain"))


@register_metric("id_dlib", needs=("inversions",))
def id_dlib(ctx: EvalContext) -> MetricResult:
    """dlib face-recognition cosine similarity on faces found in both images (NaN where none)."""
    from e4e.identity import build_identity

    with unavailable_on_missing("id_dlib"):
        net = ctx.cached("identity:dlib", lambda: build_identity("dlib"))
    res = _cosine_metric(ctx, "id_dlib", net)
    s = np.asarray(res.per_image["id_dlib"], dtype=float)
    n = int(np.isfinite(s).sum())
    if n == 0:
        raise MetricUnavailable(f"id_dlib: dlib found no face pair in any of the {len(s)} images")
    return MetricResult({"id_dlib": res.values["id_dlib"], "id_dlib_n_faces": float(n)}, res.per_image)


class _InsightFaceArcFace:
    """insightface ArcFace ONNX -> L2-normalised embeddings of the fixed FFHQ face crop."""

    def __init__(self, path):
        from e4e.extras import require_extra

        get_model = require_extra("insightface.model_zoo", "faces", "id_insightface").get_model
        self.model = get_model(str(path), providers=["CPUExecutionProvider"])
        if self.model is None:
            raise MetricUnavailable(f"id_insightface: insightface could not load {path} as a recognition model")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        from e4e.fileio import to_uint8_hwc
        from e4e.identity import arcface_crop

        imgs = to_uint8_hwc(arcface_crop(x.float().cpu()))[..., ::-1]  # RGB -> BGR, 112x112
        feats = torch.from_numpy(np.asarray(self.model.get_feat(list(np.ascontiguousarray(imgs))), np.float32))
        return feats / feats.norm(dim=1, keepdim=True)


@register_metric("id_insightface", needs=("inversions", "weights:arcface_onnx"))
def id_insightface(ctx: EvalContext) -> MetricResult:
    """Cosine similarity of a user-supplied insightface ArcFace ONNX model (fixed FFHQ crop)."""
    with unavailable_on_missing("id_insightface"):
        path = require("arcface_onnx", ctx.option("insightface_model", None))
        net = ctx.cached("identity:insightface", lambda: _InsightFaceArcFace(path))
    return _cosine_metric(ctx, "id_insightface", net)
