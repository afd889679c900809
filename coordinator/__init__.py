"""The saga coordinator: declared sagas, a write-ahead saga log, retries, breakers, recovery."""
