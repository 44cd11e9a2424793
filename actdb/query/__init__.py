"""SQL over a store: view definitions, connections, the saved-query catalogue, output formats."""
