"""Run the coordinator: ``python -m coordinator`` (the options of ``sagawire serve coordinator``).

Port 50050 by default (``SAGAWIRE_PORT`` or ``--port``; 0 picks a free one).
"""

from cli.serve import run_module

if __name__ == "__main__":
    run_module("coordinator")
