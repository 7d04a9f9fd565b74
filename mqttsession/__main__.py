"""``python -m mqttsession``."""

import sys

from .cli import main

sys.exit(main())
