"""`python -m churnlens.cli`: the same as the `churnlens` command."""

import sys

from churnlens.cli.app import main

sys.exit(main())
