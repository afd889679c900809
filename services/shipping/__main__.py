"""Run the shipping service: ``python -m services.shipping`` (or ``sagawire serve shipping``)."""

from services.launcher import main

if __name__ == "__main__":
    main("shipping")
