"""Run the coordinator: ``python -m coordinator [--port N] [--data-dir DIR]``.

Port 50050 by default (``SAGAWIRE_PORT`` or ``--port``; 0 picks a free one).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from coordinator.app import main


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m coordinator", description=__doc__)
    parser.add_argument("--port", type=int, default=None, help="port (0: any free port)")
    parser.add_argument("--data-dir", type=Path, default=None, help="directory of the saga log")
    return parser.parse_args()


if __name__ == "__main__":
    args = _args()
    main(port=args.port, data_dir=args.data_dir)
