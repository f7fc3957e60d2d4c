"""The training worker with the test stand-ins (subprocess / torchrun tests only)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import distill_standins

from lite3r.training.worker import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], distill_standins.components()))
