"""``python -m edgecam`` runs the CLI."""

from edgecam.cli import main

raise SystemExit(main())
