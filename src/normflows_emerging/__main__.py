"""``python -m normflows_emerging``: the command line, see :mod:`normflows_emerging.app.cli`."""

import sys

from .app import main

sys.exit(main())
