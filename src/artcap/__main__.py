"""`python -m artcap ...` (and `torchrun -m artcap train ...`)."""

import sys

from .cli import main

sys.exit(main())
