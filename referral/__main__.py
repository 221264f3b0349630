"""`python -m referral` runs the command-line interface."""

from referral.cli import main

raise SystemExit(main())
