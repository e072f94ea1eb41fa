"""``python -m surgeon``: the same as the ``surgeon`` command."""

from surgeon.cli import entry_point

entry_point()
