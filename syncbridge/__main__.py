"""``python -m syncbridge``: run the server, or another command (see --help)."""

import sys

from syncbridge.cli import main

sys.exit(main())
