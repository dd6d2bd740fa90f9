# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The factorial ablation study: what d-reg, L_adv and the progressive schedule each do
#
# Reads only the committed per-seed results in `reports/data/ablation_study/seed<N>/<member>/`
# (written by `make ablation-study SEED=N`), so it runs without any MLflow store. Writes the same
# tables and figure as `make ablation-effects` into `$E4E_REPORTS_DIR` (default `reports/`).
#
# An effect is the factorial contrast over the 8 e4e members (main effect: mean with the component
# on minus mean with it off), paired by test image within a seed; its error is the spread over
# training seeds (or, with one seed, over test images: `se_basis`).

# %%
import os
from pathlib import Path

import pandas as pd
from IPython.display import Markdown, display

from experiments.ablation import export as E
from experiments.ablation import factorial as F
from experiments.ablation.cli import write_tables
from experiments.ablation.mechanism import mechanism_table
from experiments.report import to_markdown

ROOT = Path(os.environ.get("E4E_ABLATION_DATA", E.DATA_ROOT))
OUT = Path(os.environ.get("E4E_REPORTS_DIR", "reports"))
study = E.load_study(ROOT)
print({seed: sorted(members) for seed, members in study.items()})

# %% [markdown]
# ## Effects of each component (and their interactions) on every metric

# %%
metrics = F.default_metrics()
written = write_tables(study, OUT, metrics)
effects = pd.read_csv(OUT / "tables" / "ablation_effects.csv") if (OUT / "tables" / "ablation_effects.csv").exists() else None
if effects is not None:
    main = effects[~effects.effect.str.contains(" x ")]
    display(Markdown(to_markdown(main.pivot(index="metric", columns="effect", values="estimate").reindex(metrics).dropna(how="all"))))

# %% [markdown]
# ## The figure: every effect with its 95 % interval

# %%
if effects is not None:
    from experiments.ablation.figures import effects_figure
    fig = effects_figure(effects, metrics)

# %% [markdown]
# ## The paper's sequential view: pSp → + W^k → + d-reg → + progressive → + L_adv

# %%
try:
    display(Markdown(to_markdown(F.sequential_table(study, metrics), index=False)))
except LookupError as exc:
    print(f"not all members exported yet: {exc}")

# %% [markdown]
# ## Mechanism: loss shares, the latent discriminator, offsets against W's spread

# %%
display(Markdown(to_markdown(mechanism_table(study), index=False)))
