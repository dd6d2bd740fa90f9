"""Train an encoder (e4e, pSp, single-W, ReStyle-e4e / -pSp) with the one trainer.

    python -m experiments.train --config experiments/configs/synth.yaml --config experiments/configs/psp.yaml \\
        max_steps=2000 delta_reg.enabled=false
    torchrun --nproc_per_node=2 -m experiments.train --config ... (DDP: gloo on CPU, nccl on GPU)

Config merge order: dataclass defaults (the official e4e recipe, e4e/config.py) <- each --config
YAML (with its ``defaults:`` includes) <- ``key.sub=value`` overrides. A run resumes automatically
from ``<out_dir>/last.pt`` into the same MLflow run.
"""
from __future__ import annotations

import argparse
import json
import sys

from e4e import config as C
from e4e.cli import Parser, add_tracking_flag, guarded


def _key_table() -> str:
    rows = C.describe()
    width = max(len(k) for k, _, _ in rows)
    lines = ["config keys (key=value overrides; defaults are the official e4e recipe):"]
    for key, tp, default in rows:
        lines.append(f"  {key:<{width}}  {tp:<14} default: {default!r}")
    lines.append(f"aliases: {', '.join(f'{a} -> {k}' for a, k in C.ALIASES.items())}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m experiments.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_key_table())
    p.add_argument("--config", action="append", default=[], metavar="YAML",
                   help="experiment YAML (deltas only); repeat to combine, e.g. a domain file and a method file")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config (YAML) and its config_hash, then exit without training")
    add_tracking_flag(p, "; a tracking server: http://host:port")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotlist overrides, e.g. optim.lr=1e-4")
    return p


@guarded()
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = C.build_config(args.config, args.overrides)
    if args.print_config:
        print(C.to_yaml(cfg), end="")
        print(f"# config_hash: {C.config_hash(cfg)}")
        return 0
    from e4e.train import train

    summary = train(cfg, tracking_uri=args.tracking_uri)
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
