"""``python -m postwright``: the same as the ``postwright`` console script."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
