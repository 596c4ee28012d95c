"""``python -m skdcd``: the command line."""

import sys

from skdcd.cli import main

sys.exit(main())
