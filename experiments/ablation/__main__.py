import sys

from experiments.ablation.cli import main

sys.exit(main())
