"""``python -m peft_debias`` runs the CLI."""

import sys

from peft_debias.cli.main import main

sys.exit(main())
