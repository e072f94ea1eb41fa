"""CLI commands, one module each; ``surgeon.cli.COMMANDS`` lists them."""
