"""Migration checks and `mvc paste` on trained hosts: a canonical brick transfers to an
independently seeded host, the legacy negative control (tensors copied exactly) is caught, the
portable decoder is exact on every host, and paste refuses when its migration gate fails."""
import json
import os

import pytest
import torch
from click.testing import CliRunner

import bricks
from bricks import fixtures
from mvc.cli import cli
from semantic_ci.runner import run_ci, verify

pytestmark = pytest.mark.slow

CONFIG = """
[ci]
window = 64

[[ci.checks]]
name = "python-brick"
kind = "migration"
brick = "python"
source = "HEAD"
hosts = ["{hosts}"]
mode = "bounded"
domain_data = "domain.txt"
general_data = "general.txt"
max_domain_ratio = 1.0
max_general_ratio = 1.10
"""


@pytest.fixture(scope="module")
def trained():
    with fixtures.one_thread():
        return fixtures.trained_hosts()


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run faster on one thread on a shared 2-core machine (bricks.fixtures.one_thread)."""
    with fixtures.one_thread():
        yield


@pytest.fixture
def setup(repo, trained, monkeypatch):
    monkeypatch.chdir(repo.root)
    with open("domain.txt", "wb") as f:
        f.write(trained.domain_eval[:2048])
    with open("general.txt", "wb") as f:
        f.write(trained.general_eval[:2048])
    repo.commit({"core": trained.host_a, "brick/python": trained.brick}, message="brick", branch="host-a")
    repo.commit({"core": trained.host_b}, message="host b", branch="host-b")
    repo.commit({"core": trained.legacy_a, "brick/python": trained.legacy_brick}, message="legacy brick",
                branch="legacy-a")
    repo.commit({"core": trained.legacy_b}, message="legacy b", branch="legacy-b")
    return repo


def _check(repo, source, host):
    from semantic_ci import config
    cfg = config.parse(__import__("tomllib").loads(CONFIG.replace("{hosts}", host)), "mvc.toml")
    return run_ci(repo, source, config=cfg)


def test_canonical_brick_transfers_and_legacy_control_is_caught(setup):
    with fixtures.one_thread():
        good = _check(setup, "host-a", "host-b")
        bad = _check(setup, "legacy-a", "legacy-b")
    g, b = good["checks"][0], bad["checks"][0]
    assert g["status"] == "passed" and g["figures"]["worst_domain_ratio"] < 1.0
    assert b["status"] == "failed"
    assert b["figures"]["worst_domain_ratio"] > g["figures"]["worst_domain_ratio"]
    # the legacy brick's tensors are an exact copy: what fails is the function, not the bytes
    la = setup.tree("legacy-a", "brick/python")["tensors"]
    assert all(torch.equal(setup.load("legacy-a", "brick/python")[k], trained_tensor)
               for k, trained_tensor in fixtures.legacy_pair().brick.state_dict().items() if k in la)
    with open(os.path.join(setup.root, "mvc.toml"), "w") as f:  # (verify takes the bounds from mvc.toml)
        f.write(CONFIG.replace("{hosts}", "host-b"))
    with fixtures.one_thread():
        assert verify(setup, good["certificate"])["verified"]
    assert list(g["figures"]["hosts"]) == [setup.resolve("host-b")]  # full ids (they were 12 hex)
    from semantic_ci import certificate
    old = certificate.read(setup, good["certificate"])  # as an older mvc wrote it: hosts by 12 hex
    for c in old["checks"]:
        c["figures"]["hosts"] = {h[:12]: v for h, v in c["figures"]["hosts"].items()}
    with fixtures.one_thread():
        assert verify(setup, certificate.store(setup, old))["verified"]


@pytest.mark.parametrize("name", ["python-exact", "brick/python-exact"])  # (the component's whole name
def test_portable_decoder_is_exact_across_hosts(setup, trained, name):       # crashed, exit 4: probe h36)
    decoder = bricks.build("portable", seed=0)
    setup.commit({"brick/python-exact": decoder}, message="portable", branch="host-a")
    from semantic_ci import config
    cfg = config.parse({"ci": {"window": 64, "checks": [
        {"name": "px", "kind": "PX", "brick": name, "source": "HEAD", "hosts": ["host-b"],
         "domain_data": "domain.txt", "probe_bytes": 512}]}}, "mvc.toml")
    with fixtures.one_thread():
        r = run_ci(setup, "host-a", config=cfg)
    px = r["checks"][0]
    assert px["status"] == "passed" and px["figures"]["identical"] and px["figures"]["worst_ppl_ratio"] == 1.0


def test_paste_cli_gates_on_migration_and_names_abi_field(setup):
    with open("mvc.toml", "w") as f:
        f.write(CONFIG.replace("{hosts}", "legacy-b"))
    runner = CliRunner()
    before = setup.branches()["legacy-b"]
    with fixtures.one_thread():
        r = runner.invoke(cli, ["paste", "brick", "python", "--from", "legacy-a", "--into", "legacy-b"])
    assert r.exit_code == 1, r.output
    assert "was not moved" in r.stderr and setup.branches()["legacy-b"] == before
    # a canonical brick into a legacy host: refused on the ABI contract, field named, exit 3
    r = runner.invoke(cli, ["paste", "brick", "python", "--from", "host-a", "--into", "legacy-b", "--no-ci"])
    assert r.exit_code == 3 and "anchor_spec.version" in r.stderr
    # a canonical paste with --int8 writes the quantised blobs and records the mode
    r = runner.invoke(cli, ["paste", "brick", "python", "--from", "host-a", "--into", "host-b", "--int8",
                            "--no-ci", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    c = setup.read_commit(doc["commit"])
    assert c["extra"]["paste"]["mode"] == "int8"
    assert setup.tree(doc["commit"], "brick/python")["arch"].endswith("-int8")


def test_paste_gate_measures_the_host_being_pasted_into(setup):
    # mvc.toml's hosts (legacy-b) would fail any canonical brick on the ABI contract; the paste
    # into host-b must be judged on host-b, where the brick transfers
    with open("mvc.toml", "w") as f:
        f.write(CONFIG.replace("{hosts}", "legacy-b"))
    with fixtures.one_thread():
        r = CliRunner().invoke(cli, ["paste", "brick", "python", "--from", "host-a", "--into", "host-b", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    check = doc["ci"]["checks"][0]
    assert doc["moved"] and check["status"] == "passed"
    assert doc["ci_ran"] and doc["ci_passed"] is True and doc["certificate"] == doc["ci"]["certificate"]
    from semantic_ci import certificate
    cert = certificate.read(setup, doc["ci"]["certificate"])
    assert cert["checks"][0]["inputs"]["hosts"] == [setup.resolve("host-b~1")]  # the host before the paste
    assert cert["partial"]  # a sub-suite on this paste's brick and host: never the commit's full run
    with fixtures.one_thread():  # it verifies (it did not: its source and hosts are not mvc.toml's)
        assert verify(setup, doc["ci"]["certificate"])["verified"]
        del cert["partial"]  # ... but not as a full run
        v = verify(setup, certificate.store(setup, cert))
    assert not v["verified"] and any("paste gate" in d for c in v["checks"] for d in c["diffs"])


def test_an_int8_check_of_a_brick_stored_as_int8_measures_it_as_it_is(setup, trained):
    import bricks
    q = bricks.quantize(trained.brick)
    setup.commit({"core": trained.host_a, "brick/python": q}, message="int8 brick", branch="host-a-int8")
    from semantic_ci import config
    text = CONFIG.replace("{hosts}", "host-b").replace('mode = "bounded"', 'mode = "bounded"\nint8 = true')
    cfg = config.parse(__import__("tomllib").loads(text), "mvc.toml")
    with fixtures.one_thread():
        stored = run_ci(setup, "host-a-int8", config=cfg)["checks"][0]
        quantised_here = run_ci(setup, "host-a", config=cfg)["checks"][0]
    assert stored["status"] == quantised_here["status"] == "passed"
    assert stored["figures"] == quantised_here["figures"]  # the same int8 artifact, measured alike


def test_a_migration_check_names_the_abi_field_that_differs(setup):
    """The check said only 'ABI contract mismatch'; paste names the field."""
    from semantic_ci.runner import run_ci
    with open("mvc.toml", "w") as f:
        f.write(CONFIG.replace("{hosts}", "legacy-b").replace('source = "HEAD"', 'source = "host-a"'))
    r = run_ci(setup, "host-a")
    note = r["checks"][0].get("note") or ""
    assert not r["passed"] and "ABI mismatch in anchor_spec.version" in note, r["checks"][0]


def test_stored_records_that_do_not_rebuild_or_attach_are_errors_not_crashes(setup):
    """A brick tree whose config no longer fits its tensors, or a legacy host whose tree claims the
    canonical ABI, made the migration check (mvc ci, paste's gate) crash with exit 4 (h58);
    load_model now refuses a core whose config builds another ABI than its tree records."""
    from mvc.errors import BadInput, CorruptObject
    from mvc.objects import canonical_json, hash_bytes

    def forge(repo, obj):  # (an edited tree, as another program could store it)
        data = canonical_json(obj)
        return repo.store.put(data, oid=hash_bytes(data))
    brick = setup.tree("host-a", "brick/python")
    edited = forge(setup, {**brick, "config": {**brick["config"], "rnn": brick["config"]["rnn"] * 2}})
    setup.commit({}, trees={"brick/python": edited}, message="edited brick", branch="host-a")
    with pytest.raises(BadInput, match="cannot rebuild brick/python"):
        _check(setup, "host-a", "host-b")
    legacy = setup.tree("legacy-b", "core")
    forged = forge(setup, {**legacy, "abi": setup.tree("host-b", "core")["abi"]})
    setup.commit({}, trees={"core": forged}, message="claims the canonical ABI", branch="legacy-b")
    with pytest.raises(CorruptObject, match="records ABI .*, but its config builds ABI"):
        setup.load_model("legacy-b", "core")
    with pytest.raises((BadInput, CorruptObject)):
        _check(setup, "host-a~1", "legacy-b")


def test_the_paste_gate_measures_the_host_the_paste_lands_on_when_its_branch_moved(setup, trained, monkeypatch):
    """The CLI resolved --into for the gate before paste resolved the branch again: a commit landing
    on host-b in between got the paste on top while the gate (and the pasted commit's certificate)
    measured the brick on the core before it (h58)."""
    import mvc
    with open("mvc.toml", "w") as f:
        f.write(CONFIG.replace("{hosts}", "legacy-b"))
    real = mvc.Repo.paste_brick

    def racing(self, *a, **k):  # another writer commits onto host-b meanwhile
        mvc.Repo(setup.root).commit({"core": trained.host_a}, message="another core", branch="host-b")
        return real(self, *a, **k)
    monkeypatch.setattr(mvc.Repo, "paste_brick", racing)
    with fixtures.one_thread():
        r = CliRunner().invoke(cli, ["paste", "brick", "python", "--from", "host-a", "--into", "host-b", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    parent = setup.read_commit(doc["commit"])["parents"][0]
    assert setup.read_commit(parent)["message"] == "another core"
    from semantic_ci import certificate
    assert certificate.read(setup, doc["ci"]["certificate"])["checks"][0]["inputs"]["hosts"] == [parent]


def test_an_int8_paste_of_a_brick_with_non_finite_weights_does_not_advise_pasting_it_anyway(setup, trained):
    """The hint was "paste it without --int8" (written for int8 artifacts): for a diverged brick (h73 06)."""
    import copy
    br = copy.deepcopy(trained.brick)
    with torch.no_grad():
        for p in br.parameters():
            p.fill_(float("nan"))
    setup.commit({"core": trained.host_a, "brick/python": br}, message="diverged", branch="diverged")
    r = CliRunner().invoke(cli, ["paste", "brick", "python", "--from", "diverged", "--into", "host-b", "--int8",
                                 "--no-ci", "--as", "python8"])
    assert r.exit_code == 3 and "non-finite" in r.stderr and "without --int8" not in r.stderr
    assert "a checkpoint whose weights are finite" in r.stderr
    assert "of brick/python:" in r.stderr and "python8" not in r.stderr  # (h85: it named the destination)


@pytest.mark.parametrize("change", ["extra", "missing", "shape"])
def test_a_brick_that_does_not_fit_its_record_is_not_pasted(setup, trained, change, monkeypatch):
    """A brick module given a buffer after its build was pasted (exit 0) onto a host that could never
    attach it; --int8 of the same brick was refused (h85)."""
    import copy
    from mvc.errors import BadInput
    br = copy.deepcopy(trained.brick)
    name = next(iter(br.state_dict()))
    if change == "extra":  # (as an older mvc committed it: commit refuses it now)
        br.register_buffer("junk", torch.ones(3))
        monkeypatch.setattr("mvc.tensors.check_module_fits", lambda *a: None)
    setup.commit({"core": trained.host_a, "brick/python": br}, message="odd brick", branch="odd")
    if change != "extra":  # (a tree edited after the commit: a tensor dropped, or of another shape)
        tree = setup.tree("odd", "brick/python")
        if change == "missing":
            del tree["tensors"][name]
        else:
            tree["tensors"][name]["shape"] = [1] + tree["tensors"][name]["shape"]
        setup.commit({}, trees={"brick/python": setup.write_object(tree)}, message="edited", branch="odd")
    host, before = setup.resolve("host-b"), set(setup.store.ids())
    expect = {"extra": "an extra tensor 'junk'", "missing": f"no tensor '{name}'", "shape": f"another shape of '{name}'"}
    with pytest.raises(BadInput, match=f"does not fit its recorded arch .* it has {expect[change]}"):
        setup.paste_brick("python", "odd", "host-b")
    assert setup.resolve("host-b") == host and set(setup.store.ids()) == before


def test_paste_checks_abi_records_against_what_the_configs_build(setup, trained):
    """h73 01/02: a legacy core whose abi_spec was set to the canonical one before the commit took a
    canonical brick (load_model then refused the result); an int8 brick or a hash-only record
    claiming the canonical ABI was pasted on its word."""
    import copy
    from mvc.errors import AbiMismatch
    from mvc.objects import commit_object
    from mvc.refs import utc_now
    leg = copy.deepcopy(trained.legacy_b)
    leg.abi_spec = trained.host_a.abi_spec
    setup.commit({"core": leg}, message="legacy claiming canonical", branch="claims")
    with pytest.raises(AbiMismatch, match="the host's config builds ABI .*, but its tree records ABI"):
        setup.paste_brick("python", "host-a", "claims")
    canon = setup.tree("host-b", "core")["abi"]
    lc = setup.commit({"core": trained.legacy_a, "brick/lq": bricks.quantize(trained.legacy_brick),
                       "brick/l": trained.legacy_brick}, message="legacy bricks", branch="legacy-run")
    comps = dict(setup.read_commit(lc)["components"])
    for name, abi in (("brick/lq", canon), ("brick/l", {"hash": canon["hash"]})):
        t = setup.read_tree(comps[name])
        t["abi"] = abi
        comps[name] = setup.write_object(t)
    cid = setup.write_object(commit_object(comps, [lc], "edited", "x", utc_now()))
    setup.refs.update("refs/heads/legacy-run", cid, expected=lc, message="edit", author="x")
    before = setup.branches()["host-b"]
    for name in ("lq", "l"):
        with pytest.raises(AbiMismatch, match="the brick's config builds another ABI"):
            setup.paste_brick(name, "legacy-run", "host-b", run_hooks=False)
    assert setup.branches()["host-b"] == before


def test_a_round_trip_check_of_a_core_with_its_brick_measures_it(setup):
    """h72: an exact-logits round trip with `bricks` rebuilt the core from the brick-attached
    model's state dict and called the healthy commit damaged (exit 3)."""
    from semantic_ci import config
    cfg = config.parse({"ci": {"window": 64, "checks": [
        {"name": "rt", "kind": "L2", "component": "core", "bricks": ["python"], "probe_bytes": 512}]}}, "mvc.toml")
    r = run_ci(setup, "host-a", config=cfg)
    rt = r["checks"][0]
    assert rt["status"] == "passed", rt
