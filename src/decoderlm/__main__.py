"""`python -m decoderlm ...` (also what `torchrun -m decoderlm train ...` runs)."""

import sys

from decoderlm.cli import main

sys.exit(main())
