"""The mvc command line: a click group with one error boundary (see DESIGN.md section 4)."""
from .main import cli, main

__all__ = ["cli", "main"]
