"""Developer tasks: code generation and the like (run as scripts, importable by tests)."""
