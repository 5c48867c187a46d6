"""python -m clusterfusion: the same command line as `clusterfusion`."""

from .cli import main

raise SystemExit(main())
