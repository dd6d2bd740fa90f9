"""The factorial ablation study: export a training seed from its MLflow store into the repository,
and compute the effects from the exported files alone (no MLflow store needed).

    python -m experiments.ablation export --seed 0 --store sqlite:///mlruns/ablation_seed0.db
    python -m experiments.ablation effects     # reports/tables/ablation_{effects,sequential,members,mechanism,e4e_vs_psp}.{csv,md}
                                               # reports/figures/ablation_effects.{pdf,png}
"""
from __future__ import annotations

import argparse
from pathlib import Path

from e4e.cli import HelpFormatter, Parser, comma_list, guarded

from experiments.ablation import export as E
from experiments.ablation import factorial as F


def _cmd_export(args) -> int:
    names = E.export_seed(args.store, args.seed, args.root, args.experiment, args.grid,
                          gradients=not args.no_gradients, workdir=args.workdir)
    print(f"seed {args.seed}: exported {len(names)} member(s) to {E.seed_dir(args.root, args.seed)}: {', '.join(names)}")
    return 0


def write_tables(study, out: Path, metrics: list[str]) -> list[Path]:
    from experiments.report import to_markdown
    from e4e.fileio import atomic_write

    seeds = ", ".join(str(s) for s in sorted(study))
    written = []
    from experiments.ablation.mechanism import mechanism_table

    tables = {"ablation_effects": (F.effects_table, "Main effects and interactions of e4e's components"),
              "ablation_mechanism": (lambda st, _m: mechanism_table(st),
                                     "Loss shares and latent D over the last 10 % of training, offsets ÷ W's spread"),
              "ablation_sequential": (F.sequential_table, "The paper's sequential view, each step minus the previous"),
              "ablation_members": (F.levels_table, "Every member's value"),
              "ablation_e4e_vs_psp": (lambda st, m: F.pair_table(st, "e4e", "psp", m),
                                      "e4e − pSp, paired by test image")}
    for name, (fn, what) in tables.items():
        try:
            table = fn(study, metrics)
        except LookupError as exc:   # a seed without every member: say so, write nothing for this table
            print(f"{name}: not written ({exc})")
            continue
        caption = (f"{what} (seeds {seeds}; estimate ± se over seeds, or over test images when "
                   f"se_basis is `images`; python -m experiments.ablation effects).")
        for suffix, text in ((".csv", table.to_csv(index=False)),
                             (".md", caption + "\n\n" + to_markdown(table, index=False))):
            path = out / "tables" / f"{name}{suffix}"
            atomic_write(path, lambda f, t=text: f.write(t), mode="w")
            written.append(path)
        if name == "ablation_effects" and not table.empty:
            from experiments.ablation.figures import effects_figure, save

            written += save(effects_figure(table, metrics), out, "ablation_effects")
    return written


def _cmd_effects(args) -> int:
    study = E.load_study(args.root)
    if not study:
        raise LookupError(f"no exported seed under {args.root}")
    metrics = F.default_metrics(args.directions, args.strength)
    for path in write_tables(study, Path(args.out), metrics):
        print(path)
    return 0


def edit_sizes(directions, strengths, n: int = 64, seed: int = 0, generator: str | None = None) -> "pd.DataFrame":
    """Per direction and strength, the mean per-pixel MSE between G(w) and G(w + s d) over ``n``
    generator samples (synth generator, const noise): how large an edit is in pixels, to be set
    against an encoder's re-inversion error (``lec_img_<dir>_0``)."""
    import pandas as pd
    import torch

    from e4e.checkpoints import load_generator
    from e4e.editing import direction_offset, load_direction
    from e4e.train import SYNTH_GENERATOR

    g = load_generator(generator or SYNTH_GENERATOR).eval()
    z = torch.randn(n, g.style_dim, generator=torch.Generator().manual_seed(seed))
    rows = []
    with torch.no_grad():
        w = g.mapping(z)[:, None].repeat(1, g.n_latent, 1)
        y0 = g.synthesis(w, noise_mode="const")
        for d in directions:
            offset = direction_offset(load_direction("synth", d), g.n_latent, g.style_dim)
            for s in strengths:
                y1 = g.synthesis(w + s * offset, noise_mode="const")
                rows.append({"direction": d, "strength": s, "edit_mse": float(((y1 - y0) ** 2).mean())})
    return pd.DataFrame(rows)


def _cmd_edit_size(args) -> int:
    from experiments.report import to_markdown

    table = edit_sizes(args.directions, [float(s) for s in args.strengths], args.n)
    print(to_markdown(table.pivot(index="direction", columns="strength", values="edit_mse")))
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(prog="python -m experiments.ablation", description=__doc__, formatter_class=HelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="copy one seed's finished members from its store into the repository",
                        formatter_class=HelpFormatter)
    ex.add_argument("--seed", type=int, required=True, help="the training seed of the store's runs")
    ex.add_argument("--store", required=True, help="that seed's MLflow tracking URI")
    ex.add_argument("--experiment", default="synth", help="MLflow experiment")
    ex.add_argument("--grid", default=E.GRID, help="grid whose members are exported")
    ex.add_argument("--root", default=str(E.DATA_ROOT), help="where seed<N>/<member>/ folders go")
    ex.add_argument("--workdir", default=".", help="the folder the grid ran in (the members' relative data paths)")
    ex.add_argument("--no-gradients", action="store_true",
                    help="skip each member's gradient shares (measured on its last.pt, seconds per member)")
    ex.set_defaults(fn=_cmd_export)
    ef = sub.add_parser("effects", help="effects tables and figure from the exported seeds",
                        formatter_class=HelpFormatter)
    ef.add_argument("--root", default=str(E.DATA_ROOT), help="the exported seeds")
    ef.add_argument("--out", default="reports", help="tables/ and figures/ go here")
    ef.add_argument("--directions", type=comma_list, default="age,smile", help="the LEC directions (comma-separated)")
    ef.add_argument("--strength", type=float, default=12, help="the LEC edit strength")
    ef.set_defaults(fn=_cmd_effects)
    es = sub.add_parser("edit-size", help="how far an edit moves a generator sample in pixels (MSE), per strength",
                        formatter_class=HelpFormatter)
    es.add_argument("--directions", type=comma_list, default="smile,age,yaw", help="synth directions (comma-separated)")
    es.add_argument("--strengths", type=comma_list, default="6,12,24,36", help="edit strengths (comma-separated)")
    es.add_argument("--n", type=int, default=64, help="generator samples")
    es.set_defaults(fn=_cmd_edit_size)
    return ap


@guarded(LookupError)
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.fn(args)
