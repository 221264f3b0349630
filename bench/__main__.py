"""``python -m bench``: run the benchmark harness (see ``bench.harness``)."""

from bench.harness import main

raise SystemExit(main())
