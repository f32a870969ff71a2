"""Experiments: the OWASP lab run end to end (more runners come with the sweep)."""
