"""``python3 -P <path>/nodelab up|down|status|inventory``: what tests/lab/lab runs."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nodelab.cli import main  # noqa: E402

sys.exit(main())
