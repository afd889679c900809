"""The saga log: records and their changes, the port, and its SQLite, PostgreSQL and
in-memory adapters."""
