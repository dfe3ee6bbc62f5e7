"""Evidence: the audit trail (history), signed checkpoints, writ lint and postmortems. Reads the store and the engine's public view; writes nothing but its own reports."""
