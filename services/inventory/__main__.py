"""Run the inventory service: ``python -m services.inventory``, with the options of
``sagawire serve inventory``."""

from cli.serve import run_module

if __name__ == "__main__":
    run_module("inventory")
