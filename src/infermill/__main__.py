"""``python -m infermill``: the same as the ``infermill`` command."""

from .cli import console

console()
