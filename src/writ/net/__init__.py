"""Network plumbing shared by the ways in: listener limits and listen-address parsing. Imports only writ.core."""
