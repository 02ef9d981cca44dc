"""CLI subcommands, one module each (registered in :data:`peft_debias.cli.COMMANDS`)."""
