"""`python -m sftrl.study --sweep_dir=... --out=...` (see `sftrl.study`)."""

import sys

from sftrl.study.cli import main

sys.exit(main())
