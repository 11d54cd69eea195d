"""``python -m cxbridge`` is the ``cxbridge`` command."""

from cxbridge.cli import main

main()
