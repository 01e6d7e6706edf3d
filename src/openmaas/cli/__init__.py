"""The ``openmaas`` command line: ``serve`` and the admin commands, which run on the data
directory's platform as the admin API does (audited as ``cli:<unix user>``). One module per
command group; importing them registers their commands on ``main``."""

from openmaas.cli import accounts, billing, catalog, people, users
from openmaas.cli.root import main

__all__ = ["accounts", "billing", "catalog", "main", "people", "users"]
