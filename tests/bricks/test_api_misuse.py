"""The public bricks API under misuse: bad options, bricks stacked or swapped, data of the wrong type,
training that diverges, int8 of what is not a float brick. Tiny untrained hosts only."""
import math
import warnings

import pytest
import torch

import bricks
import cores
from cores.train import TrainingDiverged

DATA = bytes((i * 7 + i // 13) % 251 for i in range(3000))
FAST = dict(batch_size=2, seq_len=32, progress=False)


@pytest.fixture(scope="module")
def host():
    return cores.build("layercake", seed=0).eval()


@pytest.mark.parametrize("kwargs, error, field", [
    ({"rank": 0}, ValueError, "rank"),        # built a zero-rank brick silently
    ({"rank": 1.5}, TypeError, "rank"),       # was truncated to 1
    ({"taps": 0}, ValueError, "taps"),        # an empty embedding table
    ({"experts": 0}, ValueError, "experts"),
    ({"d_embed": 0}, ValueError, "sparse brick: d_embed"),
    ({"rnn": -1}, ValueError, "sparse brick: rnn"),
    ({"seed": 1.5}, TypeError, "seed"),
    ({"seed": -3}, ValueError, "seed"),
    ({"read_anchors": "no"}, TypeError, "read_anchors"),  # a truthy string turned the anchors on
])
def test_sparse_build_rejects_bad_options(host, kwargs, error, field):
    with pytest.raises(error, match=field):
        bricks.build("sparse", host=host, **kwargs)


@pytest.mark.parametrize("kwargs, error, field", [
    ({"hidden": 0}, ValueError, "portable decoder: hidden"),
    ({"d_embed": -1}, ValueError, "portable decoder: d_embed"),
    ({"seed": "3"}, TypeError, "seed"),  # was int("3") silently
])
def test_portable_build_rejects_bad_options(kwargs, error, field):
    with pytest.raises(error, match=field):
        bricks.build("portable", **kwargs)


def test_attaching_to_an_attached_model_says_so(host):
    brick = bricks.build("sparse", host=host)
    model = bricks.attach(host, brick)
    with pytest.raises(ValueError, match="already has a brick attached"):  # was "host '' has no ABI interface"
        bricks.attach(model, bricks.build("sparse", host=host, seed=1))
    with pytest.raises(ValueError, match="pass the brick itself"):
        bricks.attach(host, model)
    assert bricks.fits(model, brick) is not None
    assert bricks.detach(model) is host
    with pytest.raises(TypeError, match="bricks.attach"):
        bricks.detach(bricks.detach(model))


def test_attached_model_checks_byte_ids(host):
    model = bricks.attach(host, bricks.build("sparse", host=host)).eval()
    with pytest.raises(ValueError, match=r"byte_ids.*x\[None\]"):  # was an IndexError deep in the host
        model(torch.zeros(8, dtype=torch.long))
    with pytest.raises(ValueError, match="0..255"):
        model(torch.full((1, 8), 256))


def test_float32_brick_on_a_bfloat16_host():
    """The delta is decoded in the brick's precision and added in the host's (was a dtype error)."""
    host = cores.build("layercake", seed=0)
    brick = bricks.build("sparse", host=host, zero_init=False)
    bf16 = cores.build("layercake", seed=0).to(torch.bfloat16).eval()
    x = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = bricks.attach(bf16, brick).eval()(x)
        ref = bricks.attach(host.eval(), brick).eval()(x)
    assert out.dtype == torch.bfloat16 and bool(torch.isfinite(out).all())
    assert float((out.float() - ref).abs().max()) < 0.5


@pytest.mark.parametrize("kwargs, error, words", [
    ({"data": DATA.decode("latin-1")}, TypeError, "data must be bytes.*encode"),
    ({"general": DATA.decode("latin-1")}, TypeError, "general must be bytes"),
    ({"data": b""}, ValueError, "empty"),
    ({"seq_len": 3}, ValueError, "seq_len"),       # no whole patch: the balance term was NaN
    ({"batch_size": 0}, ValueError, "batch_size"),  # was a reshape error inside the host
    ({"lr": float("inf")}, ValueError, "lr"),       # trained to NaN and returned
    ({"steps": 1.5}, TypeError, "steps"),
    ({"general_weight": float("nan")}, ValueError, "general_weight"),
])
def test_brick_train_checks_arguments(host, kwargs, error, words):
    settings = {**FAST, "data": DATA, "steps": 1, **kwargs}
    with pytest.raises(error, match=words):
        bricks.train(bricks.build("sparse", host=host), host=host, **settings)


@pytest.mark.parametrize("window, error", [(0, ValueError), (-1, ValueError), (2.5, TypeError)])
def test_max_logit_diff_checks_window_bytes(host, window, error):
    dec = bricks.build("portable", hidden=8, d_embed=8)
    models = [bricks.attach(host, dec), bricks.attach(host, dec)]
    with pytest.raises(error, match="window_bytes"):  # 0 was a ZeroDivisionError
        bricks.max_logit_diff(models, DATA[:600], window_bytes=window)


def test_brick_data_of_exactly_one_window_trains():
    """A window is seq_len + 1 bytes: data that long trains (the check asked for one byte more)."""
    dec = bricks.build("portable", hidden=8, d_embed=8)
    t = bricks.BrickTrainer(dec, None, DATA[:9], steps=1, batch_size=2, seq_len=8, eval_data=DATA[:100])
    assert torch.equal(t.batch(0), torch.tensor([list(DATA[:9])] * 2))
    assert math.isfinite(t.run()[0])
    with pytest.raises(ValueError, match="8 bytes for windows of 9"):
        bricks.BrickTrainer(dec, None, DATA[:8], steps=1, seq_len=8, eval_data=DATA[:100])


@pytest.mark.filterwarnings("ignore:training a sparse brick without a general-text regulariser")
def test_brick_divergence_is_an_error(host):
    with pytest.raises(TrainingDiverged, match="brick training diverged at step 2"):
        bricks.train(bricks.build("sparse", host=host), host=host, data=DATA, steps=4, lr=1e30, **FAST)


def test_huge_bpb_reports_infinite_perplexity_instead_of_crashing():
    """lr 1e9 keeps the weights finite but the held-out BPB is ~1e19: 2.0 ** bpb raised OverflowError
    after the whole run had trained."""
    m = bricks.train(bricks.build("portable"), data=DATA, steps=3, lr=1e9, **FAST)
    assert m["domain_bpb"] > 1024 and m["domain_ppl"] == math.inf
    assert bricks.ppl_ratio(2000.0, 1.0) == math.inf and bricks.ppl_ratio(1.0, 2000.0) == 0.0


def test_quantize_says_what_it_was_given(host):
    brick = bricks.build("sparse", host=host)
    q = bricks.quantize(brick)
    with pytest.raises(ValueError, match="int8 artifact already"):
        bricks.quantize(q)
    with pytest.raises(ValueError, match="model.brick"):
        bricks.quantize(bricks.attach(host, brick))
    with pytest.raises(ValueError, match="expected a float brick"):  # was "unknown brick arch 'layercake'"
        bricks.quantize(host)


def test_quantize_refuses_non_finite_weights(host):
    """A diverged brick used to quantise to garbage codes with NaN / inf scales, silently."""
    brick = bricks.build("sparse", host=host)
    with torch.no_grad():
        brick.down.weight[3, 5] = float("nan")
    with pytest.raises(ValueError, match="'down.weight'.*non-finite"):
        bricks.quantize(brick)
    assert math.isnan(float(brick.down.weight.detach()[3, 5]))  # the brick itself is left as it was


@pytest.mark.parametrize("min_numel, error, words", [
    (True, TypeError, "min_numel must be an integer, got bool"),    # was taken (and recorded) as 1
    (1.5, TypeError, "min_numel must be an integer, got float"),    # was truncated to 1
    (-1, ValueError, "min_numel must be >= 0, got -1"),             # was recorded as -1
    ("x", TypeError, "min_numel must be an integer, got str"),      # was int()'s own error, naming nothing
    (None, TypeError, "min_numel must be an integer, got NoneType"),
])
def test_quantize_checks_min_numel(host, min_numel, error, words):
    brick = bricks.build("sparse", host=host, rank=4, rnn=0, d_embed=8)
    with pytest.raises(error, match=words):
        bricks.quantize(brick, min_numel=min_numel)
    with pytest.raises(error, match=words):
        bricks.int8.Int8Brick(brick, min_numel)
    assert bricks.quantize(brick, min_numel=0).mvc_config["min_numel"] == 0
    old = dict(bricks.quantize(brick).mvc_config, min_numel=-1)  # (what older code recorded for -1: h90)
    assert bricks.int8.build_from_config(old).mvc_config["min_numel"] == 0


def test_building_bricks_leaves_the_global_rng_alone(host):
    torch.manual_seed(0)
    want = torch.randn(4)
    for make in (lambda: bricks.build("sparse", host=host), lambda: bricks.build("portable"),
                 lambda: bricks.quantize(bricks.build("portable"))):
        torch.manual_seed(0)
        make()
        assert torch.equal(torch.randn(4), want)


def test_rebuild_names_tensors_that_do_not_fit(host):
    """Missing / extra tensors or another config: a ValueError naming them (was torch's RuntimeError)."""
    brick = bricks.build("sparse", host=host)
    tree = {"arch": brick.mvc_arch, "config": brick.mvc_config, "kind": "brick", "abi": {"hash": brick.abi_spec.hash}}
    state = dict(brick.state_dict())
    state["extra"] = state.pop("up.weight")
    with pytest.raises(ValueError, match=r'up\.weight.*"extra"'):
        bricks.rebuild(tree, state)
    with pytest.raises(ValueError, match="size mismatch for down.weight"):
        bricks.rebuild(tree, bricks.build("sparse", host=host, rank=8).state_dict())
    assert isinstance(bricks.rebuild(tree, brick.state_dict()), bricks.SparseBrick)


def test_cores_train_refuses_an_attached_model(host):
    """cores.train(attached model) trained the host with the brick, silently breaking its frozen ABI."""
    core = cores.build("layercake", seed=0)
    before = {k: v.clone() for k, v in core.state_dict().items()}
    model = bricks.attach(core, bricks.build("sparse", host=core))
    with pytest.raises(TypeError, match="bricks.train"):
        cores.train(model, DATA, steps=1, **FAST)
    assert all(torch.equal(before[k], v) for k, v in core.state_dict().items())


def test_committing_an_attached_model_is_refused_with_the_parts(repo):
    """repo.commit({"model": attached}) stored the combined tensors with no arch/config, silently:
    nothing could rebuild or migrate them. Now a BadInput showing how to commit the parts; nothing written."""
    import mvc
    core = cores.build("layercake", "tiny", seed=0).eval()
    brick = bricks.build("sparse", host=core, seed=1, zero_init=False)
    model = bricks.attach(core, brick).eval()
    first = repo.commit({"notes": {"x": torch.zeros(2)}}, message="first")
    objects = set(repo.store.ids())
    with pytest.raises(mvc.errors.BadInput, match="attached model") as e:
        repo.commit({"model": model}, message="attached")
    assert 'repo.commit({"core": model.host, "brick/<name>": model.brick}' in e.value.hint
    assert "attach_from_commit" in e.value.hint
    assert repo.head() == first and [c["id"] for c in repo.log()] == [first]
    assert set(repo.store.ids()) == objects  # not even a tensor blob
    cid = repo.commit({"core": model.host, "brick/python": model.brick}, message="host + brick")
    assert repo.tree(cid, "brick/python")["arch"] == "sparse-brick"
    again = bricks.attach_from_commit(repo, cid, "python", repo.load_model(cid, "core")).eval()
    x = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
    portable = bricks.BrickModel(None, bricks.build("portable"))
    with pytest.raises(mvc.errors.BadInput, match="attached model") as e:
        repo.commit({"model": portable}, message="portable")
    assert 'repo.commit({"brick/<name>": model.brick}' in e.value.hint


def test_sparse_training_without_general_text_warns(host):
    """A sparse brick trained without general= had no general-text regulariser, silently."""
    with pytest.warns(UserWarning, match="without a general-text regulariser.*general=") as record:
        bricks.train(bricks.build("sparse", host=host), host=host, data=DATA, steps=1, evaluate=False, **FAST)
    assert sum("general-text regulariser" in str(w.message) for w in record) == 1  # once per call, not per step
    for kwargs in ({"general": DATA[::-1]}, {"general_weight": 0.0}):  # given, or declined on purpose
        with warnings.catch_warnings():
            warnings.filterwarnings("error", "training a sparse brick without")
            bricks.train(bricks.build("sparse", host=host), host=host, data=DATA, steps=2, evaluate=False,
                         **FAST, **kwargs)
    with warnings.catch_warnings():  # portable decoders never use general text
        warnings.filterwarnings("error", "training a sparse brick without")
        bricks.train(bricks.build("portable"), data=DATA, steps=1, evaluate=False, **FAST)


def test_a_core_committed_under_a_brick_name_is_not_pasted_as_a_brick(repo, host):
    from mvc.errors import BadInput
    repo.commit({"core": host}, message="host")
    repo.commit({"brick/fake": cores.build("layercake", config="tiny", seed=1)}, message="a core named brick/fake",
                branch="src")
    tree = repo.read_tree(repo.read_commit(repo.resolve("src"))["components"]["brick/fake"])
    assert tree["kind"] == "core"  # before: "brick", from its name
    with pytest.raises(BadInput, match="is a core component, not a brick"):  # before: pasted as a brick
        repo.paste_brick("fake", "src", "main")


def test_general_held_out_data_too_short_to_measure_is_refused_before_training(host):
    """Like the domain's: general_eval (or general text whose held-out tail is) under 2 bytes is
    refused naming it, and the brick is left as it was (it was trained, then the measure failed)."""
    brick = bricks.build("sparse", host=host, seed=0)
    before = {k: v.clone() for k, v in brick.state_dict().items()}
    with pytest.raises(ValueError, match="general_eval: the held-out data has 1 byte"):
        bricks.train(brick, host=host, data=DATA, general=DATA, general_eval=b"x", **{**FAST, "steps": 2})
    assert all(torch.equal(before[k], v) for k, v in brick.state_dict().items())


def test_numpy_numbers_in_configs_are_stored_as_plain_json_values(repo):
    """numpy integers and floats pass the config checks: they are kept as ints and floats, so the
    core and brick commit (their configs are JSON) and rebuild the same."""
    import numpy as np
    core = cores.build("layercake", "tiny", d_model=np.int64(96), lr=np.float32(0.002))
    assert type(core.mvc_config["d_model"]) is int and type(core.mvc_config["overrides"]["d_model"]) is int
    assert type(core.mvc_config["lr"]) is float
    brick = bricks.build("sparse", host=core, rank=np.int64(4))
    assert type(brick.mvc_config["rank"]) is int
    cid = repo.commit({"core": core, "brick/x": brick}, message="numpy sizes")
    assert repo.load_model(cid, "core").mvc_config == core.mvc_config
    with pytest.raises(TypeError, match="a brick config holds object"):
        bricks.build("portable", hidden=object())
