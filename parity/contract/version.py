"""The package version, kept in the contract so every layer can record it."""
__version__ = "0.1.0"
