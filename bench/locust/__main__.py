"""``python -m bench.locust --rate 10x --duration 60s``: see :mod:`bench.locust.run`."""

import sys

from bench.locust.run import main

sys.exit(main())
