"""CLI for the embedded synth domain (docs/design.md section 4).

Subcommands::

    python -m experiments.synth build --out data/synth               # render the data set (--gap: realism gap)
    python -m experiments.synth train-attrnet --data data/synth      # rebuild the attribute net

Other modules add subcommands: if a module of ``_EXTENSIONS`` (``e4e.synth.gan``,
``e4e.synth.directions``, ``e4e.synth.trunk``, ...) imports and defines ``add_cli(subparsers)``, it is
called to register theirs (e.g. ``train-generator``, ``directions``, ``pretrain-trunk``).
Each registered subparser sets ``func`` (via ``set_defaults``) to the function that runs it.

``build`` writes only into an empty folder or one it built (its marker ``.synth-build.json``, or,
for a folder built before the marker existed, nothing but its own file names): any other file there
stops it with one ``error:`` line before anything is written; ``--force`` builds beside such files
and still deletes or replaces only the builder's own.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from e4e.cli import HelpFormatter, Parser, add_device_flag, guarded, resolve_device

__all__ = ["build_parser", "main"]

_EXTENSIONS = ("e4e.synth.gan", "e4e.synth.distill", "e4e.synth.directions", "e4e.synth.trunk", "experiments.synth_gap")
_FMT = HelpFormatter


def _add_build(sub):
    from e4e.synth.dataset import DEFAULT_GAP

    p = sub.add_parser("build", help="render the synth data set (PNG folders + attributes.csv)", formatter_class=_FMT)
    p.add_argument("--out", default="data/synth",
                   help="output folder: empty, missing, or one an earlier build wrote (see --force)")
    p.add_argument("--force", action="store_true",
                   help="build even where the folder holds files the builder did not write; those stay "
                        "untouched (only the builder's own files are deleted or replaced)")
    p.add_argument("--n-train", type=int, default=30000, help="training images")
    p.add_argument("--n-test", type=int, default=1000, help="test images")
    p.add_argument("--n-val", type=int, default=1000, help="validation images (model selection)")
    p.add_argument("--seed", type=int, default=0, help="attribute sampling seed")
    p.add_argument("--size", type=int, default=64, help="image size in pixels")
    p.add_argument("--supersample", type=int, default=3, help="render at size*supersample, then box-filter down")
    p.add_argument("--workers", type=int, default=2, help="rendering processes (<=1: in this process)")
    p.add_argument("--gap", type=float, default=DEFAULT_GAP,
                   help="realism gap of the 'real' images (all splits): details the generator, trained on clean "
                        "renders, never sees (skin texture, freckles, moles, scar, earrings, headband, background "
                        "patterns, extra saturation, yaw/smile past their range); 0 = clean renders, ~1 = strong; "
                        "the default is DEFAULT_GAP in e4e/synth/dataset.py")
    p.set_defaults(func=_run_build)


def _run_build(args):
    from e4e.synth.dataset import build_dataset, check_build_args

    check_build_args(args.n_train, args.n_test, args.n_val, args.size, args.supersample, args.gap)
    t0 = time.time()
    counts = build_dataset(args.out, args.n_train, args.n_test, args.n_val, seed=args.seed, size=args.size,
                           supersample=args.supersample, workers=args.workers, gap=args.gap, force=args.force)
    print(json.dumps(dict(out=args.out, counts=counts, gap=args.gap, wall_s=round(time.time() - t0, 1))))


def _add_train_attrnet(sub):
    p = sub.add_parser("train-attrnet", help="train the attribute network on a built data set", formatter_class=_FMT)
    p.add_argument("--data", default="data/synth", help="data set root (from `build`)")
    p.add_argument("--out", default="e4e/synth/assets/attrnet.pt",
                   help="weights file; provenance goes beside it (.json)")
    p.add_argument("--steps", type=int, default=1500, help="optimisation steps")
    p.add_argument("--batch", type=int, default=64, help="batch size")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (AdamW, cosine decay)")
    p.add_argument("--seed", type=int, default=0, help="seed")
    add_device_flag(p)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a busy 2-core machine)")
    p.set_defaults(func=_run_train_attrnet)


def _run_train_attrnet(args):
    import torch

    from e4e.synth.attrnet import train_attrnet

    torch.set_num_threads(args.threads)
    metrics = train_attrnet(args.data, args.out, steps=args.steps, batch=args.batch, lr=args.lr,
                            seed=args.seed, device=resolve_device(args.device),
                            command=" ".join(["python -m experiments.synth", *sys.argv[1:]]))
    print(json.dumps(metrics, indent=2))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with this module's subcommands and any registered by extensions."""
    parser = Parser(prog="python -m experiments.synth", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_build(sub)
    _add_train_attrnet(sub)
    for name in _EXTENSIONS:
        try:
            mod = importlib.import_module(name)
        except ImportError as e:
            if e.name != name:  # the module exists but one of its imports failed: say so
                raise
            continue
        if hasattr(mod, "add_cli"):
            mod.add_cli(sub)
    return parser


@guarded()
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    rc = args.func(args)
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    sys.exit(main())
