"""Stamp: issuer service for energy granular certificates on Project Origin."""

__version__ = "0.1.0"
