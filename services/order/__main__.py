"""Run the order service: ``python -m services.order``, with the options of
``sagawire serve order``."""

from cli.serve import run_module

if __name__ == "__main__":
    run_module("order")
