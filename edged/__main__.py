"""`python -m edged` is the same as the `edged` command."""

from edged.cli import main

raise SystemExit(main())
