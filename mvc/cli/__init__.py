"""The mvc command line: a click group with one error boundary (see DESIGN.md section 4)."""
try:
    from .main import cli, entry, main
except KeyboardInterrupt:  # Ctrl-C while the command starts: the same line as later, no traceback
    import sys
    sys.stderr.write("error: interrupted\n")
    raise SystemExit(130) from None

__all__ = ["cli", "entry", "main"]
