"""List every external (pretrained) file the e4e pipeline uses and whether it is on this machine;
import a StyleGAN2-ADA network pickle as a rosinality-format generator.

    python -m experiments.weights [list] [--json] [--missing-only]
    python -m experiments.weights import-ada network-snapshot.pkl --out G.pt [--latent-avg auto|w_avg|mean]

Nothing is downloaded (docs/design.md §3): a missing file is listed with its source; put it in
``./weights/`` or ``$E4E_WEIGHTS`` (torchvision / pytorch-fid files also in ``$TORCH_HOME/hub/checkpoints``).
The metrics and losses that need a missing file report themselves unavailable.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from e4e import weights
from e4e.cli import HelpFormatter, Parser, guarded, non_negative_int, positive_int

COLUMNS = ("status", "key", "file", "purpose", "used_by", "source")


def rows(missing_only: bool = False) -> list[dict]:
    out = []
    for r in weights.status():
        if missing_only and r["present"]:
            continue
        out.append({**r, "status": "present" if r["present"] else "MISSING"})
    return out


def format_table(table: list[dict], columns=COLUMNS, max_width: int = 60) -> str:
    def cell(v) -> str:
        s = str(v)
        return s if len(s) <= max_width else s[:max_width - 1] + "…"

    widths = {c: max([len(c)] + [len(cell(r[c])) for r in table]) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns), "  ".join("-" * widths[c] for c in columns)]
    lines += ["  ".join(cell(r[c]).ljust(widths[c]) for c in columns) for r in table]
    return "\n".join(lines)


IMPORT_ADA_HELP = """Convert the G_ema network of an NVlabs stylegan2-ada-pytorch pickle into this project's
rosinality StyleGAN2 format ({'g_ema', 'latent_avg', 'latent_avg_source', 'ada_import'}), loadable
with e4e.checkpoints.load_generator and every --generator option.

The pickle is read without running code from it (e4e.models.ada): only the globals of a network
pickle are resolved, each to a function that builds data; the Python source stored in the file is
never executed and storages load with torch.load(weights_only=True). A file that names anything
else (os.system, eval, an unknown class) is refused with one error line, before anything runs.

latent_avg: 'w_avg' takes the pickle's mapping.w_avg buffer (the moving average of w tracked in
training, as rosinality's converter took TF's dlatent_avg); 'mean' averages the mapping network
over --n-samples z drawn with --seed; 'auto' uses w_avg when present, else mean. The choice is
recorded in the file (latent_avg_source)."""


def import_ada_cmd(args) -> int:
    from e4e.checkpoints import save_generator
    from e4e.cli import check_out_dir
    from e4e.config import ConfigError
    from e4e.models.ada import import_ada

    if args.out.resolve() == args.pkl.resolve():
        raise ConfigError("--out must differ from the input pickle")
    check_out_dir(args.out.parent, "--out folder")
    g, latent_avg, meta = import_ada(args.pkl, args.latent_avg, args.n_samples, args.seed)
    save_generator(g, args.out, latent_avg=latent_avg, extra=meta)
    info, src = meta["ada_import"], meta["latent_avg_source"]
    print(f"{args.pkl} (G_ema) -> {args.out}: {g.size} px, {g.n_latent} W+ rows, style_dim {g.style_dim}, "
          f"{g.n_mlp} mapping layers (lr multiplier {info['mapping_lr_multiplier']})")
    print("latent_avg: " + ("the pickle's mapping.w_avg buffer" if src["method"] == "w_avg" else
                            f"mean of the mapping network over {src['n_samples']} z (seed {src['seed']})"
                            + ("" if src["w_avg_in_pickle"] else "; the pickle has no w_avg buffer")))
    if info["conv_clamp"] is not None or info["fp16_blocks"]:
        print(f"note: the pickle's conv_clamp={info['conv_clamp']} and {info['fp16_blocks']} fp16 block(s) are not "
              "reproduced (float32, no clamp; same images unless an activation exceeds the clamp)")
    return 0


def add_list_flags(p: argparse.ArgumentParser, default) -> None:
    p.add_argument("--json", action="store_true", default=default,
                   help="print the status as JSON (one object per file)")
    p.add_argument("--missing-only", action="store_true", default=default, help="list only the files that are missing")


@guarded()
def main(argv=None) -> int:
    ap = Parser(prog="python -m experiments.weights", description=__doc__.split("\n\n")[0],
                formatter_class=argparse.RawDescriptionHelpFormatter,
                epilog="Search order: explicit path > $E4E_WEIGHTS > ./weights > $TORCH_HOME/hub/checkpoints")
    add_list_flags(ap, False)
    sub = ap.add_subparsers(dest="command", metavar="{list,import-ada}")
    add_list_flags(sub.add_parser("list", help="list the pretrained files (the default command)"), argparse.SUPPRESS)
    imp = sub.add_parser("import-ada", help="convert a StyleGAN2-ADA network pickle (safely) to a rosinality .pt",
                         description=IMPORT_ADA_HELP, formatter_class=HelpFormatter)
    imp.add_argument("pkl", type=Path, help="network pickle of NVlabs/stylegan2-ada-pytorch (network-snapshot-*.pkl)")
    imp.add_argument("--out", type=Path, required=True, help="output generator file (.pt)")
    imp.add_argument("--latent-avg", choices=("auto", "w_avg", "mean"), default="auto",
                     help="where latent_avg comes from (see above)")
    imp.add_argument("--n-samples", type=positive_int, default=10_000, help="z samples of the 'mean' latent_avg")
    imp.add_argument("--seed", type=non_negative_int, default=0, help="seed of those z samples")
    args = ap.parse_args(argv)
    if args.command == "import-ada":
        return import_ada_cmd(args)
    table = rows(args.missing_only)
    if args.json:
        print(json.dumps(table, indent=2))
    else:
        print(format_table(table))
        n_present = sum(r["present"] for r in table)
        print(f"\n{n_present}/{len(table)} present. Search dirs: "
              f"{', '.join(str(d) for d in weights.search_dirs())} (+ torch cache for torch_cache files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
