"""What the coordinator and the services agree on: the saga definitions (one file
drives both modes), the wire values of a saga's mode, and how a step's result is
laid over the saga's data. Both sides import this package; neither imports the other.
"""
