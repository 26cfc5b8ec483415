"""`python -m gateproxy` is the same program as the `gateproxy` command."""

from gateproxy.cli import main

raise SystemExit(main())
