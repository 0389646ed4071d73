"""`python -m transformerkit` (and `torchrun ... -m transformerkit`) runs the command line."""

import sys

from .cli import main

sys.exit(main())
