"""``python -m lite3r.app`` and the PyInstaller entry script (absolute imports: it runs as __main__)."""

import sys

from lite3r.app.main import main

if __name__ == "__main__":
    sys.exit(main())
