"""The saga interpreter: scheduling runs, the forward and backward phases, recovery, replicas."""
