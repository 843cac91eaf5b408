"""The README's main job at smoke scale: examples/layercake.toml runs end to end (hosts, bricks,
paste, int8, rubric), its rubric certificate verifies, and a re-run does no work."""
import os

import pytest

import mvc
from semantic_ci.pipeline import run_pipeline
from semantic_ci.pipeline_config import load
from semantic_ci.runner import verify

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "layercake.toml")


@pytest.mark.slow
def test_layercake_pipeline_smoke_profile(tmp_path):
    repo = mvc.Repo.init(tmp_path / "demo")
    summary = run_pipeline(repo, load(EXAMPLE, "smoke"))
    assert summary["passed"], summary.get("error")
    assert [s["stage"] for s in summary["stages"]] == ["host-a", "host-b", "host-small", "brick", "portable",
                                                        "paste", "paste-exact", "int8", "rubric"]
    rubric = repo.read_commit(summary["results"]["rubric"])["extra"]["pipeline"]
    v = verify(repo, rubric["certificate"])
    assert v["verified"] and len(v["checks"]) == 7
    # the paste reused the brick's tree: no new tensor blob on the host branch
    pasted = repo.read_commit(summary["results"]["paste/host-b"])["components"]["brick/python"]
    assert pasted == repo.read_commit(summary["results"]["brick"])["components"]["brick/python"]
    # the int8 artifact is smaller than the float brick
    int8 = repo.read_commit(repo.read_commit(summary["results"]["int8"])["parents"][0])["metrics"]
    assert int8["artifact_bytes"] < int8["float_bytes"]
    before = set(repo.store.ids())
    again = run_pipeline(repo, load(EXAMPLE, "smoke"))
    assert again["passed"] and {s["status"] for s in again["stages"]} <= {"unchanged", "passed"}
    assert set(repo.store.ids()) == before
