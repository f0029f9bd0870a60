"""Operator tools behind the command line: ``check`` (diagnostics) and ``client`` (a terminal)."""
