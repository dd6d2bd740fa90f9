"""List every external (pretrained) file the e4e pipeline uses and whether it is on this machine.

    python -m experiments.weights [--json] [--missing-only]

Nothing is downloaded (docs/design.md §3): a missing file is listed with its source; put it in
``./weights/`` or ``$E4E_WEIGHTS`` (torchvision / pytorch-fid files also in ``$TORCH_HOME/hub/checkpoints``).
The metrics and losses that need a missing file report themselves unavailable.
"""
from __future__ import annotations

import argparse
import json
import sys

from e4e import weights
from e4e.cli import Parser, guarded

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


@guarded()
def main(argv=None) -> int:
    ap = Parser(prog="python -m experiments.weights", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Search order: explicit path > $E4E_WEIGHTS > ./weights > "
                                        "$TORCH_HOME/hub/checkpoints")
    ap.add_argument("--json", action="store_true", help="print the status as JSON (one object per file)")
    ap.add_argument("--missing-only", action="store_true", help="list only the files that are missing")
    args = ap.parse_args(argv)
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
