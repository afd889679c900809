"""Run the payment service: ``python -m services.payment``, with the options of
``sagawire serve payment``."""

from cli.serve import run_module

if __name__ == "__main__":
    run_module("payment")
