"""`python -m mvc` runs the command line."""
from mvc.cli import entry

entry()
