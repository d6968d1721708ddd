"""``python -m deepkmeans``."""

import sys

from deepkmeans.cli import main

sys.exit(main())
