"""Bundled examples: small models built from data that ships with installed packages (no downloads)."""
