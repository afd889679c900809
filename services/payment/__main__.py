"""Run the payment service: ``python -m services.payment`` (or ``sagawire serve payment``)."""

from services.launcher import main

if __name__ == "__main__":
    main("payment")
