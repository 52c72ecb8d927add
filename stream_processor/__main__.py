"""``python -m stream_processor``: the same entry point as the console script."""

import sys

from stream_processor.cli import main

sys.exit(main())
