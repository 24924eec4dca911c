"""``python -m edge``: run an edge node (see :mod:`edge.cli`)."""

from edge.cli import main

raise SystemExit(main())
