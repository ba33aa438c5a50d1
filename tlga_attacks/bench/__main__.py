"""Entry point of ``python -m tlga_attacks.bench`` and ``torchrun -m tlga_attacks.bench``."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
