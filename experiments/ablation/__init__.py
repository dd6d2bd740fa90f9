"""The factorial ablation study (``experiments/grids/ablation_study.yaml``): per-seed export of each
member's compact results into the repository, and the analysis that reads only those files.

    python -m experiments.ablation export --seed 0 --store sqlite:///mlruns/ablation_seed0.db
    python -m experiments.ablation effects          # reports/tables/ablation_effects.{csv,md}, figure

``export`` (``experiments.ablation.export``) and the analysis (``experiments.ablation.factorial``) are
kept apart: the analysis needs no MLflow store, only ``reports/data/ablation_study/seed<N>/<member>/``.
"""
