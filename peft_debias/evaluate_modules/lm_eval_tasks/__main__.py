"""``python -m peft_debias.evaluate_modules.lm_eval_tasks`` prints the folder to pass to ``lm_eval --include_path``."""

import sys

from peft_debias.evaluate_modules.lm_eval_tasks import tasks_dir

sys.stdout.write(f"{tasks_dir()}\n")
