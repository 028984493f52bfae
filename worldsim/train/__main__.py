"""`python -m worldsim.train` / `torchrun ... -m worldsim.train` / the `worldsim-train` console script."""

from __future__ import annotations

import os
import sys

from worldsim.train.config import ConfigError, load_config
from worldsim.train.initial_weights import LoadPathError


def main(argv: list[str] | None = None) -> int:
    """Parse `experiment=NAME key=value ...`, train, and return the exit status (2 for user errors)."""
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        from worldsim import train

        print(train.__doc__)
        return 0
    try:
        cfg = load_config(argv)
        from worldsim.train.trainer import train as run  # heavy imports only once the config is good

        run(cfg)
    except (ConfigError, LoadPathError) as e:
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank finds the same problem
            print(f"worldsim-train: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
