"""``python -m infdepth`` runs the command line (also under torchrun)."""

import sys

from infdepth.cli import main

sys.exit(main())
