"""``python -m openmaas`` runs the ``openmaas`` command."""

from openmaas.cli import main

main()
