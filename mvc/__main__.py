"""`python -m mvc` runs the command line."""
from mvc.cli import main

main()
