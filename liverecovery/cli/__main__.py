"""``python -m liverecovery.cli``: the same as the ``liverecovery`` console script."""

import sys

from liverecovery.cli import main

sys.exit(main())
