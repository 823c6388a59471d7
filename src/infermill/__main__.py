"""``python -m infermill``: the same as the ``infermill`` command."""

import sys

from .cli import main

sys.exit(main())
