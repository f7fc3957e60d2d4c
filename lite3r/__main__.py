"""``python -m lite3r`` is the ``lite3r`` command."""

import sys

from lite3r.cli import main

if __name__ == "__main__":
    sys.exit(main())
