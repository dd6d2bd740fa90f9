"""``python -m experiments.grid``: the grid command line (``experiments.grid.cli``)."""
import sys

from experiments.grid.cli import main

sys.exit(main())
