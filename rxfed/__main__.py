"""``python -m rxfed`` runs the ``rxfed`` command."""

import sys

from rxfed.cli import main

sys.exit(main())
