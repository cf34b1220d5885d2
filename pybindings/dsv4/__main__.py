"""`python -m dsv4` is the same as the `dsv4` console script."""
from dsv4.cli import main

raise SystemExit(main())
