"""``python -m profiling`` runs the ``ckpt-profile`` command line."""

import sys

from .cli import main

sys.exit(main())
