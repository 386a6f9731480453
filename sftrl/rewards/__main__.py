"""`python -m sftrl.rewards --check FILE.jsonl ...`: the rescoring CLI (`sftrl.rewards.cli`).

Nothing the worker processes run is defined here: they find their functions under the package's
module names (`sftrl.rewards.symbolic`) and never import this `__main__`, which `python -m`
runs after importing `sftrl.rewards` itself.
"""

from __future__ import annotations

import sys

from sftrl.rewards.cli import main

if __name__ == "__main__":
    sys.exit(main())
