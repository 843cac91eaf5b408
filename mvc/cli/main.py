"""Entry point of the `mvc` command: the group, its single error boundary and the command modules."""
from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import warnings

import click

from ..errors import MvcError, Terminated, environment_error, interruption
from .output import error, silence_stdout, stand_in_for_closed_stdout, warn, write_stdout

# the printers whose OSError is a failure to print (click.echo, write_stdout); rich's modules too
_PRINTERS = {("click.utils", "echo"), (write_stdout.__module__, write_stdout.__name__)}


def _print_traceback() -> None:
    import traceback  # only on the error path: it costs every command ~3 ms to import
    traceback.print_exc()


def _debug_traceback() -> None:
    if os.environ.get("MVC_DEBUG", "").strip().lower() not in ("", "0", "false", "no", "off"):
        _print_traceback()


def _output_failed(e: OSError) -> bool:
    """Whether `e` came from printing (click.echo, rich, write_stdout), e.g. `> /dev/full` or a
    closed stdout, rather than from the repository or an output file: it is then not the
    repository's disk that is full."""
    tb = e.__traceback__
    while tb is not None:
        module = tb.tb_frame.f_globals.get("__name__", "")
        if (module, tb.tb_frame.f_code.co_name) in _PRINTERS or module.startswith("rich."):
            return True
        tb = tb.tb_next
    return False


def _tolerant_output() -> None:
    """Text this terminal's encoding cannot show (a commit message's ✓ under PYTHONIOENCODING=ascii)
    is printed as an escape, not a crash: click picks its own writer, rich writes to the stream."""
    for stream in (sys.stdout, sys.stderr):
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
        if encoding != "utf8" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


class _NamesItsContext:
    """Gives a usage error its command's context: click's parser raises some (`-n` with no value)
    with none, and `_usage_error` names the command's --help from it."""

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as e:
            if e.ctx is None:
                e.ctx = ctx
            raise


class MvcCommand(_NamesItsContext, click.Command):
    pass


class MvcSubGroup(_NamesItsContext, click.Group):
    """A group under mvc (remote, hooks, paste): its commands name their context too."""
    command_class = MvcCommand


class MvcGroup(_NamesItsContext, click.Group):
    """Maps exceptions to `error: <what> (<hint>)` and the exit codes of DESIGN.md section 4."""
    command_class = MvcCommand
    group_class = MvcSubGroup

    def invoke(self, ctx):
        warnings.showwarning = lambda msg, *a, **k: warn(msg)
        refs = sys.modules.get("mvc.refs")
        if refs:  # moves an earlier command of this process made (tests run many) are not ours
            refs.forget_moves()
        stand_in_for_closed_stdout()
        try:
            return super().invoke(ctx)
        except MvcError as e:
            _debug_traceback()
            error(str(e))
            ctx.exit(e.exit_code)
        except click.UsageError as e:
            try:
                _usage_error(e)
            except BrokenPipeError:  # (its line could not be written: a usage error all the same)
                silence_stdout()
                ctx.exit(2)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, SystemExit):
            raise
        except KeyboardInterrupt as e:
            from ..refs import moves_of_this_thread, moves_logged
            landed = getattr(e, "landed", None)  # mvc.errors.InterruptedAfterLanding
            moved = moves_of_this_thread()  # e.g. a commit that landed, then a signal while it printed
            how, status = interruption(e, stop_signal())
            resumes = ctx.meta.get("mvc.resumes")  # a command that picks up where it stopped says so
            with contextlib.suppress(OSError):  # (a hangup: the terminal may be gone)
                if landed:
                    error(f"{how} after {landed}", getattr(e, "hint", None) or "it stands: see mvc log; do not commit it again")
                elif moved:
                    error(f"{how} after it had {', '.join(moved)}", "that stands" + (": see mvc log and mvc reflog"
                                                                                     if moves_logged() else "") + "; "
                          + (resumes or "do not run the command again blindly"))
                elif resumes:
                    error(how, resumes)
                else:
                    error(how)
            ctx.exit(status)
        except BrokenPipeError:  # the reader has all it wanted; a result decided already stands
            ctx.exit(ctx.meta.get("mvc.exit_status", 0))
        except UnicodeEncodeError as e:  # a name this locale cannot spell (LC_ALL=C without UTF-8 mode)
            if e.encoding.lower().replace("-", "") in ("utf8", "utf16", "utf32"):
                self._bug(ctx, e)  # (not the locale's doing)
            _debug_traceback()
            error(f"{e.object[e.start:e.end]!r} cannot be written in this locale's encoding, {e.encoding}",
                  "use a UTF-8 locale, e.g. LC_ALL=C.UTF-8, or PYTHONUTF8=1")
            ctx.exit(3)
        except (OSError, MemoryError, RuntimeError) as e:
            if isinstance(e, OSError) and stop_signal() is not None:  # (SIGHUP: the terminal is gone,
                how, status = interruption(e, stop_signal())        # and writing to it fails on the way out)
                with contextlib.suppress(OSError):
                    error(how)
                ctx.exit(status)
            if isinstance(e, OSError) and _output_failed(e):
                from ..refs import moves_so_far
                error(f"cannot write to standard output: {e.strerror or e}", f"{moves_so_far()}; what it printed is lost")
                ctx.exit(3)
            found = environment_error(e)
            if found:  # the machine's state (a full disk, no write access, the open-file limit, memory)
                _debug_traceback()
                from ..refs import moves_so_far
                error(found[0], f"{moves_so_far()}; {found[1]}")
                ctx.exit(3)
            self._bug(ctx, e)
        except Exception as e:
            self._bug(ctx, e)

    def make_context(self, *args, **kwargs):
        usage = None
        try:
            try:  # (mvc's own options and arguments: `mvc --bogus`)
                return super().make_context(*args, **kwargs)
            except click.UsageError as e:
                usage = e
                _usage_error(e)
        except BrokenPipeError:  # `mvc --help | true`: help and --version are printed here, before invoke;
            silence_stdout()     # the reader has what it wanted (click would exit 1, a negative result)
            help_only = usage is None or (isinstance(usage, getattr(click.exceptions, "NoArgsIsHelpError", ()))
                                          and usage.ctx is not None and usage.ctx.parent is None)
            sys.exit(0 if help_only else 2)  # (a usage error whose line could not be written is one still)

    @staticmethod
    def _bug(ctx, e: BaseException):
        _print_traceback()
        error(f"unexpected {type(e).__name__}: {e}", "this is a bug in mvc; please report it")
        ctx.exit(4)


def _usage_error(e: click.UsageError):
    """A usage error (an unknown option or command, a bad value) as DESIGN.md section 4's one line,
    `error: <what> (see mvc CMD --help)`, exit 2, instead of click's usage block; `mvc` alone
    prints its help (on stdout, exit 0), a group alone (`mvc paste`) names its commands."""
    if e.ctx is None:
        raise e
    if isinstance(e, getattr(click.exceptions, "NoArgsIsHelpError", ())):
        if e.ctx.parent is None:
            click.echo(e.ctx.get_help())
            sys.exit(0)
        error(f"{e.ctx.command_path} needs a command: {', '.join(e.ctx.command.list_commands(e.ctx))}",
              f"see {e.ctx.command_path} --help")
        sys.exit(e.exit_code)
    what = " ".join(e.format_message().split())
    what = what[:-1] if what.endswith(".") and not what.endswith("..") else what
    aside = re.fullmatch(r"(Got unexpected extra arguments?) \(([^()]*)\)", what)  # (in the hint's place)
    if aside:
        what = f"{aside[1]}: {aside[2]}"
    guess = re.fullmatch(r"(.*?)\.? \((Did you mean one of|Possible options): ([^()]*)\)", what)
    if guess:  # "No such command 'instal'. (Did you mean one of: 'install', 'uninstall'?)"
        what = f"{guess[1]}: {'did you mean one of' if guess[2].startswith('Did') else 'possible options'} {guess[3]}"
    error(what, None if what.endswith(")") else f"see {e.ctx.command_path} --help")
    sys.exit(e.exit_code)


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


_terminated: list[int] = []


def stop_signal() -> int | None:
    """The last SIGTERM or SIGHUP this process's handler saw (a KeyboardInterrupt raised while the
    cleanup ran still ends the command as that signal asks), or None."""
    return _terminated[-1] if _terminated else None


def _on_sigterm(signum, frame):
    _terminated.append(signum)
    raise Terminated(signum)


_on_sigterm.mvc_interrupts = True  # (interrupts as Ctrl-C does: see mvc.interrupts.call_holding_user_handlers)


STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


def resumes_when_interrupted(how: str | None) -> None:
    """Say, when the running command is interrupted, that running it again finishes it (`how`:
    e.g. "the same mvc push sends the rest"; None: no longer)."""
    meta = click.get_current_context().meta
    if how is None:
        meta.pop("mvc.resumes", None)
    else:
        meta["mvc.resumes"] = how


from . import repo_cmds  # noqa: E402,F401  (registers commands)
from . import pack_cmds  # noqa: E402,F401  (registers pack)
from . import ci_cmds  # noqa: E402,F401  (registers ci, verify, hooks)
from . import run_cmds  # noqa: E402,F401  (registers run)
from . import paste_cmds  # noqa: E402,F401  (registers paste)
from . import remote_cmds  # noqa: E402,F401  (registers remote, push, fetch, pull, clone)


def main(argv=None):
    _terminated.clear()  # (a signal an earlier call of main in this process saw is not this one's)
    from kernels.determinism import pin_blas_reproducibility  # torch-free; before any BLAS call
    pin_blas_reproducibility()
    # SIGTERM (kill, a scheduler's stop) and SIGHUP (the terminal closed) clean up as Ctrl-C does:
    # temp files beside a checkout's outputs, half-written packs; ref moves finish first
    # (interrupts.interrupts_deferred)
    for sig in STOP_SIGNALS:
        if signal.getsignal(sig) is not signal.SIG_IGN:  # (`nohup mvc ...` ignores SIGHUP: it stays so)
            signal.signal(sig, _on_sigterm)
    _tolerant_output()
    return cli.main(args=argv, prog_name="mvc")


def entry():
    """The `mvc` command (console script, `python -m mvc`): main(), after which a late Ctrl-C or
    SIGTERM (while the interpreter waits for worker threads, say) is ignored: the outcome is
    decided and said, and must not turn into a silent kill or a traceback. (main() itself leaves
    the signal handlers of a process that calls it in place.)"""
    try:
        main()
    finally:
        while True:
            try:
                for sig in (signal.SIGINT, *STOP_SIGNALS):
                    signal.signal(sig, signal.SIG_IGN)
                break
            except KeyboardInterrupt:  # (one arrived just now: ignore it too)
                continue

