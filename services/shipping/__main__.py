"""Run the shipping service: ``python -m services.shipping``, with the options of
``sagawire serve shipping``."""

from cli.serve import run_module

if __name__ == "__main__":
    run_module("shipping")
