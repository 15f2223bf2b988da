"""``python -m quicserve``: the same as the ``quicserve`` command."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
