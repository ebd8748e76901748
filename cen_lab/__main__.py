"""``python -m cen_lab`` is the ``cen-lab`` command."""

from .cli import main

raise SystemExit(main())
