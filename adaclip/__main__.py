"""``python -m adaclip``: the command line."""

import sys

from adaclip.cli import main

if __name__ == "__main__":
    sys.exit(main())
