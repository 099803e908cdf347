"""``python -m runner AGENT_DIR``: the paper-trading pod (see :mod:`runner.service`)."""

import sys

from runner.service import main

if __name__ == "__main__":
    sys.exit(main())
