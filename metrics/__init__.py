"""Evaluation metrics of the e4e analysis (docs/design.md §2): a registry of functions
``fn(ctx: EvalContext) -> MetricResult`` named by protocol. Importing the package registers the
metrics of every module (nothing heavy is loaded: pretrained networks are built on first use).

    from metrics import EvalContext, get_metric, list_metrics
    ctx = EvalContext(inverter, images, batch_size=8)
    values, per_image = get_metric("l2")(ctx)
"""
from metrics.registry import (EvalContext, MetricResult, MetricUnavailable, get_metric, list_metrics,  # noqa: F401
                              metric_spec, register_metric)
from metrics import distortion, editability, identity, latent, lec, perception  # noqa: F401,E402

__all__ = ["EvalContext", "MetricResult", "MetricUnavailable", "get_metric", "list_metrics", "metric_spec",
           "register_metric"]
