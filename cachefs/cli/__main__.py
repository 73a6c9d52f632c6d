"""`python -m cachefs.cli`: the same as the `cachefs` command."""

import sys

from .entry import main

sys.exit(main())
