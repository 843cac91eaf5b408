"""`mvc run PIPELINE`: drive a training pipeline with a live view or JSON Lines events."""
from __future__ import annotations

import contextlib
import json
import os
import sys

import click

from ..errors import interruption
from ..repo import Repo
from .main import cli, stop_signal
from .output import console, error, negative_result, one_line, short, shown, silence_stdout, table


class LiveView:
    """A rich table of stages: step, loss, held-out BPB, throughput, last commit and gate status."""

    def __init__(self):
        from rich.live import Live
        self.rows: dict[str, dict] = {}
        self.con = console(stderr=True)
        self.live = Live(self._table(), console=self.con, refresh_per_second=4,
                         transient=False) if self.con.is_terminal else None

    def _table(self):
        t = table("stage", "status", "step", "loss", "held-out bpb", "bytes/s", "commit", "gate", title="mvc run",
                  names=("stage",), ids=("commit",))
        for name, r in self.rows.items():
            t.add_row(shown(name), r.get("status", ""), str(r.get("step", "")),
                      f"{r['loss']:.4f}" if isinstance(r.get("loss"), float) else "",
                      f"{r['bpb']:.4f}" if isinstance(r.get("bpb"), float) else "",
                      f"{r.get('bps', 0):,}" if r.get("bps") else "", short(r.get("commit")), r.get("gate", ""))
        return t

    def __call__(self, e: dict):
        stage = e.get("stage")
        if stage:
            row = self.rows.setdefault(stage, {})
            kind = e["event"]
            if kind == "stage":
                row["status"] = "running"
            elif kind == "checkpoint":
                row.update(step=f"{e['step']}/{e['total']}", loss=e.get("loss"), bpb=e.get("heldout_bpb"),
                           bps=e.get("bytes_per_second"), commit=e.get("commit"))
            elif kind == "gate":
                row["gate"] = "-" if e["passed"] is None else "pass" if e["passed"] else "FAIL"
            elif kind in ("rollback", "fallback", "resume", "skip"):
                row["status"] = kind + (f" #{e['attempt']}" if kind == "fallback" else "")
            elif kind == "stage_done":
                row.update(status=e["status"], commit=e["commit"])
            elif kind == "stage_failed":
                row["status"] = "FAILED"
        if self.live:
            self.live.update(self._table())
        elif e["event"] not in ("stream",):
            self.con.print(one_line(_line(e)))

    def __enter__(self):
        if self.live:
            self.live.__enter__()
        return self

    def __exit__(self, *exc):
        if self.live:
            self.live.__exit__(*exc)


HEX = frozenset("0123456789abcdef")


def _line(e: dict) -> str:
    # object ids (64 hex digits) are cut to 12; other text of 64 characters (a reason) is not: it
    # was, and read "reason=stage rubric" (h91)
    rest = {k: (short(v) if isinstance(v, str) and len(v) == 64 and set(v) <= HEX else v)
            for k, v in e.items() if k != "event"}
    return f"{e['event']}: " + ", ".join(f"{k}={v}" for k, v in rest.items() if v is not None)


@cli.command("run")
@click.argument("pipeline_file", type=click.Path(dir_okay=False))
@click.option("--profile", help="Apply [profile.NAME] overrides (e.g. tiny, full).")
@click.option("--from-stage", help="Start at this stage (earlier stages must have finished); "
              "exit 3 when no stage has that name.")
@click.option("--json", "as_json", is_flag=True, help="JSON Lines: one event per line, the summary last.")
def run_cmd(pipeline_file, profile, from_stage, as_json):
    """Run a training pipeline: commit every checkpoint, gate every stage, roll back on failure.

    A killed run resumes from its last commit when the same command runs again, bit for bit;
    a finished stage whose inputs did not change does no work.

    \b
    Examples:
      mvc run examples/layercake.toml --profile tiny
      mvc run pipeline.toml --from-stage brick --json
    """
    from semantic_ci.pipeline_config import load
    pipeline = load(pipeline_file, profile)  # validated before any training starts
    if from_stage is not None:
        pipeline.stage(from_stage)  # exit 3 naming the stages there are
    repo = Repo(os.getcwd())

    def emit(e):
        try:
            click.echo(json.dumps(e, sort_keys=True, default=str))
        except BrokenPipeError:  # the reader went away (`| head`): the run goes on, its exit
            silence_stdout()     # status still says how it ended
    try:
        summary = _run(repo, pipeline, from_stage, emit if as_json else None)
    except KeyboardInterrupt as e:  # what was committed stands; the same command resumes from it
        how, status = interruption(e, stop_signal())  # (a scheduler's SIGTERM: 143, as for every command)
        if as_json:
            emit({"event": "interrupted", "how": how, "resume": "run the same command again"})
        with contextlib.suppress(OSError):  # (a hangup: the terminal may be gone)
            error(how, "run the same command again: it resumes from the last checkpoint, bit for bit")
        sys.exit(status)
    if not summary["passed"]:
        if not as_json:
            error(str(summary.get("error")))
        sys.exit(1)


def _run(repo, pipeline, from_stage, emit) -> dict:
    """Run the pipeline with JSON Lines events (`emit`) or a live table; returns the summary."""
    from semantic_ci.pipeline import run_pipeline
    if emit is not None:
        try:
            summary = run_pipeline(repo, pipeline, from_stage, emit)
        except Exception as e:  # the last line is the summary whatever happened, then the error
            partial = getattr(e, "pipeline_summary", None)
            if partial is not None:
                emit(partial)
            raise
        if not summary["passed"]:
            negative_result()
        emit(summary)
        return summary
    with LiveView() as view:
        summary = run_pipeline(repo, pipeline, from_stage, view)
    from semantic_ci.pipeline_report import render_summary
    render_summary(repo, summary, console())
    return summary
