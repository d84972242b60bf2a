"""The version of wa: one constant at the bottom of the import graph (engine and io read it)."""

__version__ = "0.1.0"
