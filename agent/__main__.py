"""`python -m agent`, the same as the `sidecar-agent` command."""

from agent.cli import main

raise SystemExit(main())
