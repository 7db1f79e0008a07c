"""``python -m coordinator.cli``: the ``dn`` command."""

import sys

from coordinator.cli.main import main

sys.exit(main())
