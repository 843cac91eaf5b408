"""Entry point of the `mvc` command: the group, its single error boundary and the command modules."""
from __future__ import annotations

import os
import warnings

import click

from ..errors import MvcError


def _print_traceback() -> None:
    import traceback  # only on the error path: it costs every command ~3 ms to import
    traceback.print_exc()


class MvcGroup(click.Group):
    """Maps exceptions to `error: <what> (<hint>)` and the exit codes of DESIGN.md section 4."""

    def invoke(self, ctx):
        warnings.showwarning = lambda msg, *a, **k: click.echo(f"warning: {msg}", err=True)
        try:
            return super().invoke(ctx)
        except MvcError as e:
            if os.environ.get("MVC_DEBUG"):
                _print_traceback()
            click.echo(f"error: {e}", err=True)
            ctx.exit(e.exit_code)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, SystemExit):
            raise
        except KeyboardInterrupt:
            click.echo("error: interrupted", err=True)
            ctx.exit(130)
        except BrokenPipeError:
            ctx.exit(0)
        except OSError as e:
            if e.errno == 28:  # ENOSPC
                click.echo(f"error: no space left on device ({e.filename or ''}); nothing was moved", err=True)
                ctx.exit(3)
            _print_traceback()
            click.echo(f"error: unexpected {type(e).__name__}: {e} (this is a bug in mvc)", err=True)
            ctx.exit(4)
        except Exception as e:
            _print_traceback()
            click.echo(f"error: unexpected {type(e).__name__}: {e} (this is a bug in mvc; please report it)",
                       err=True)
            ctx.exit(4)


@click.group(cls=MvcGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mvc", prog_name="mvc")
def cli():
    """mvc: version control for model weights.

    \b
    Examples:
      mvc init
      mvc commit model.safetensors -m "first checkpoint" --metric loss=2.1
      mvc log -n 5
      mvc diff HEAD~1 HEAD
      mvc rollback
    """


from . import repo_cmds  # noqa: E402,F401  (registers commands)
from . import pack_cmds  # noqa: E402,F401  (registers pack)
from . import ci_cmds  # noqa: E402,F401  (registers ci, verify, hooks)
from . import run_cmds  # noqa: E402,F401  (registers run)
from . import paste_cmds  # noqa: E402,F401  (registers paste)
from . import remote_cmds  # noqa: E402,F401  (registers remote, push, fetch, pull, clone)


def main(argv=None):
    from kernels.determinism import pin_blas_reproducibility  # torch-free; before any BLAS call
    pin_blas_reproducibility()
    return cli.main(args=argv, prog_name="mvc")

