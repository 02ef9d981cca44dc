"""``python -m peft_debias`` runs the CLI."""

import sys

from .cli import main

sys.exit(main())
