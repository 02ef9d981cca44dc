"""The ``peft-debias`` command line: :mod:`peft_debias.cli.main` plus one module per subcommand."""
