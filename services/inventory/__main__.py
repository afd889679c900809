"""Run the inventory service: ``python -m services.inventory`` (or ``sagawire serve inventory``)."""

from services.launcher import main

if __name__ == "__main__":
    main("inventory")
