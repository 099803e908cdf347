"""``python -m ingester``: the market-data ingester (see ``python -m ingester --help``)."""

import sys

from ingester.cli import main

if __name__ == "__main__":
    sys.exit(main())
