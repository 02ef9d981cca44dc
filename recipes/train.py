"""Launchable training script: ``accelerate launch recipes/train.py --recipe recipes/<name>.yaml [options]``.

It is ``peft-debias train`` under another name, so every option and the error contract are the same.
"""

import sys

from peft_debias.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
