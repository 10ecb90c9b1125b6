"""`python -m chaos`: run the fault suite (see chaos/README.md)."""

import sys

from chaos.cli import main

sys.exit(main())
