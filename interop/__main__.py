"""``python -m interop``: see :mod:`interop.run`."""

from __future__ import annotations

import sys

from .run import main

sys.exit(main())
