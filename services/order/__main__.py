"""Run the order service: ``python -m services.order`` (or ``sagawire serve order``)."""

from services.launcher import main

if __name__ == "__main__":
    main("order")
