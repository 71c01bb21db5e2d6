"""``farmnode``: the node daemon's command line.

The node daemon's commands (``serve``, ``status``, ``check-config``) arrive with the
layer-4 switch; until then this entry point only reports its version.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from farmnode import __version__


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="farmnode", description="webfarm's node daemon.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.parse_args(argv)
    parser.print_help()
    sys.exit(0)


if __name__ == "__main__":
    main()
