"""What each component does inside training, from the exported files: its share of the encoder's
loss, the latent discriminator's grip on the codes, and the offsets' size against W's spread.

Per member and seed, over the last ``TAIL`` of training (the bins of ``training.csv`` past that
fraction of the steps):
- ``share_<term>``: the weighted term (``meta.loss_weights`` x the logged ``train/<term>``) over the
  sum of the weighted terms: how much of the objective the term is;
- ``d_real`` / ``d_fake``: the latent D's mean logit on W samples / on the encoder's codes, and
  ``d_acc_real`` / ``d_acc_fake`` its accuracy on each (when the run logged them);
- ``grad_share_<term>`` and ``final_d_acc_*`` (from ``gradients.json``, when exported): each term's
  share of the encoder's gradient and the final latent D's accuracy, on the final training state;
- ``offset_row<i>`` (from the evaluation's ``latent_offsets``): mean ||w_i - w_0|| over the test
  images divided by W's own spread, mean ||w - mean(w)|| of W samples.
Means over seeds.
"""
from __future__ import annotations

from typing import Mapping

import pandas as pd

TAIL = 0.1


def member_mechanism(m: dict, tail: float = TAIL) -> dict[str, float]:
    out: dict[str, float] = {}
    tr = m.get("training")
    weights = m["meta"].get("loss_weights") or {}
    if tr is not None and not tr.empty:
        last = tr[tr.step > (1 - tail) * tr.step.max()].mean(numeric_only=True)
        terms = {t: w * float(last[f"train/{t}"]) for t, w in weights.items()
                 if w > 0 and f"train/{t}" in last and last[f"train/{t}"] == last[f"train/{t}"]}
        total = sum(terms.values())
        out.update({f"share_{t[5:]}": v / total for t, v in terms.items()} if total > 0 else {})
        for k in ("d_real", "d_fake", "d_acc_real", "d_acc_fake"):
            if f"train/{k}" in last:
                out[k] = float(last[f"train/{k}"])
    out.update({k.replace("latent_", ""): v for k, v in m["metrics"].items() if k.startswith("latent_offset")})
    out.update({k if k.startswith("grad_") else f"final_{k}": v for k, v in (m.get("gradients") or {}).items()
                if k.startswith(("grad_share_", "d_acc_"))})
    return out


def mechanism_table(study: Mapping[int, Mapping[str, dict]]) -> pd.DataFrame:
    """One row per member: the quantities above, mean over seeds, with ``n_seeds``."""
    rows = []
    for seed, members in study.items():
        for name, m in members.items():
            rows.append({"member": name, "seed": seed, **member_mechanism(m)})
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows)
    order = list(dict.fromkeys(df.member))
    out = df.drop(columns="seed").groupby("member", sort=False).mean().reindex(order)
    out.insert(0, "n_seeds", df.groupby("member", sort=False).seed.nunique().reindex(order))
    return out.reset_index()
