"""``python -m normflows_emerging``: the command line, see :mod:`normflows_emerging.cli`."""

import sys

from .cli import main

sys.exit(main())
