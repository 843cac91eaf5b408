"""tensors.py: every stored dtype goes to bytes and back, from aligned and unaligned offsets."""
import pytest
import torch

from mvc.errors import BadInput
from mvc.tensors import _ST_TO_TORCH, buffer_tensor, module_state, tensor_buffer


def _sample(name: str, shape, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * 50
    dtype = getattr(torch, name)
    if dtype == torch.bool:
        return x > 0
    if not dtype.is_floating_point:
        lo = 0 if name.startswith("uint") else -100
        return x.clamp(lo, 100).to(torch.int64).to(dtype)
    return x.to(dtype)


@pytest.mark.parametrize("st", sorted(_ST_TO_TORCH))
@pytest.mark.parametrize("shape", [(), (7,), (3, 5), (2, 3, 4), (0, 4)])
@pytest.mark.parametrize("offset", [8, 3])  # canonical blobs keep data 8-byte aligned; 3 is not
def test_buffer_tensor_reads_back_every_dtype(st, shape, offset):
    t = _sample(_ST_TO_TORCH[st], shape)
    dtype, got_shape, raw = tensor_buffer(t)
    assert dtype == st and got_shape == tuple(shape)
    buf = bytearray(b"\xaa" * offset + bytes(raw) + b"\x55" * 5)  # junk around the tensor
    back = buffer_tensor(buf, offset, offset + len(raw), dtype, got_shape)
    assert back.dtype == t.dtype and back.shape == t.shape
    assert bytes(tensor_buffer(back)[2]) == bytes(raw)  # bit for bit (NaN-safe, any dtype)


def test_buffer_tensor_shares_the_buffer():
    t = torch.arange(12, dtype=torch.float32)
    _, shape, raw = tensor_buffer(t)
    buf = bytearray(8) + bytearray(raw)
    back = buffer_tensor(buf, 8, 8 + len(raw), "F32", (3, 4))
    buf[8:12] = torch.tensor([42.0]).numpy().tobytes()  # zero-copy: the tensor sees the change
    assert back[0, 0].item() == 42.0 and back[2, 3].item() == 11.0


def test_module_state_refuses_a_module_that_says_why():
    """A module with a string ``mvc_commit_refusal`` is refused with it (and ``mvc_commit_hint``), so a
    module mvc cannot rebuild (e.g. a host with a brick attached) is not stored as bare tensors."""
    class Refused(torch.nn.Linear):
        mvc_commit_refusal = "cannot commit this composite as one component"
        mvc_commit_hint = "commit its parts"

    with pytest.raises(BadInput) as e:
        module_state(Refused(2, 2))
    assert (e.value.message, e.value.hint) == ("cannot commit this composite as one component", "commit its parts")
    Refused.mvc_commit_hint = None
    with pytest.raises(BadInput, match="composite") as e:
        module_state(Refused(2, 2))
    assert e.value.hint is None
    Refused.mvc_commit_refusal = None  # not a string: committed as usual
    state, *_ = module_state(Refused(2, 2))
    assert set(state) == {"weight", "bias"}


def test_nested_checkpoints_are_refused_with_what_to_do(tmp_path):
    """An optimizer state or {"model": sd, "epoch": 3} got "save model.state_dict() instead of the
    model object", which is what the user had done."""
    import mvc
    from mvc.errors import BadInput
    repo = mvc.Repo.init(tmp_path / "r")
    m = torch.nn.Linear(3, 3)
    opt = torch.optim.Adam(m.parameters())
    m(torch.ones(1, 3)).sum().backward()
    opt.step()
    torch.save(opt.state_dict(), tmp_path / "opt.pt")  # an optimizer's state dict commits as in memory
    cid = repo.commit({"optimizer": str(tmp_path / "opt.pt")}, message="x", branch="opt")
    back = repo.load_optimizer(cid)
    assert back["param_groups"] == opt.state_dict()["param_groups"]
    assert all(torch.equal(back["state"][i][k], v) for i, per in opt.state_dict()["state"].items() for k, v in per.items())
    cases = {"ckpt.pt": ({"model": m.state_dict(), "epoch": 3}, "entry 'model' is a state dict"),
             "mixed.pt": ({"w": torch.ones(1), "epoch": 3}, "entry 'epoch' is an int (3)")}
    for name, (obj, why) in cases.items():
        torch.save(obj, tmp_path / name)
        with pytest.raises(BadInput) as e:
            repo.commit({"c": str(tmp_path / name)}, message="x")
        assert why in e.value.message and "flat mapping" in e.value.message
        assert "-c optimizer=" in e.value.hint and "repo.commit({'optimizer': opt.state_dict()})" in e.value.hint
        with pytest.raises(BadInput) as e:
            repo.commit({"c": obj}, message="x")
        assert why in e.value.message and "-c optimizer=" in e.value.hint
    assert repo.head() is None  # nothing was committed


def test_lazy_conjugate_and_negative_views_are_not_stored_as_ties(repo, tmp_path):
    c = torch.tensor([1 + 2j, 3 - 4j], dtype=torch.complex64)
    state = {"a": c, "b": c.conj(), "im": c.imag, "im_conj": c.conj().imag}
    assert state["b"].is_conj() and state["im_conj"].is_neg()
    torch.save({"a": c, "b": c.conj()}, tmp_path / "s.pt")  # (torch.save refuses c and c.imag together)
    for source, want in ((state, state), (str(tmp_path / "s.pt"), {"a": c, "b": c.conj()})):
        got = repo.load(repo.commit({"m": source}, message="views"), "m")
        assert got.keys() == want.keys()
        for k, v in want.items():
            assert torch.equal(got[k], v.resolve_conj().resolve_neg()), k
    tied = repo.load(repo.commit({"m": {"x": c, "y": c}}, message="tied"), "m")
    assert tied["x"].data_ptr() == tied["y"].data_ptr()  # a real tie is still one tensor


def test_a_plain_pickle_is_refused_in_one_line(repo, tmp_path):
    import pickle
    with open(tmp_path / "w.pt", "wb") as f:
        pickle.dump({"w": torch.ones(2)}, f)
    with pytest.raises(BadInput) as e:
        repo.commit({"m": str(tmp_path / "w.pt")}, message="x")
    assert "\n" not in e.value.message and "not a file written by torch.save" in e.value.message


def test_a_bin_file_that_is_no_pickle_is_refused_saying_what_it_is_and_how_to_keep_it(repo, tmp_path):
    """Safetensors bytes under a .bin name read as "pickle: unsupported operand 56", and no refusal
    said how to keep such a file (a tokenizer's .bin) as bytes."""
    from safetensors.torch import save_file
    save_file({"w": torch.ones(4)}, str(tmp_path / "weights.bin"))
    (tmp_path / "vocab.bin").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(BadInput, match="weights.bin: it is a safetensors file, not a torch.save pickle") as e:
        repo.commit({"m": str(tmp_path / "weights.bin")}, message="x")
    assert "rename it to .safetensors" in e.value.hint
    with pytest.raises(BadInput, match="vocab.bin: not a plain tensor checkpoint") as e:
        repo.commit({"m": str(tmp_path / "vocab.bin")}, message="x")
    assert "committing the folder holding it" in e.value.hint
    assert repo.log() == []


def test_the_reason_torch_gives_for_refusing_a_file_is_kept():
    """The reason on torch's first line ('Weights only load failed. <reason>') was dropped, and its
    advert for weights_only=False quoted instead."""
    from mvc.tensors import _load_error_reason
    text = ("Weights only load failed. ``torch.nested`` and ``torch._dynamo`` must be imported to load nested "
            "jagged tensors (NJTs)\n In PyTorch 2.6, we changed the default value of the `weights_only` argument "
            "in `torch.load` from `False` to `True`. Re-running `torch.load` with `weights_only` set to `False` "
            "will likely succeed, but it can result in arbitrary code execution.\n")
    reason = _load_error_reason(RuntimeError(text))
    assert "nested jagged tensors (NJTs)" in reason and "weights_only" not in reason and "``" not in reason


class _NoStorage(torch.Tensor):
    """A wrapper subclass with no storage of its own (as DTensor and FakeTensor are)."""
    @staticmethod
    def __new__(cls, elem):
        return torch.Tensor._make_wrapper_subclass(cls, elem.shape, dtype=elem.dtype)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise NotImplementedError(f"{func} is not supported here")


@pytest.mark.parametrize("make,match,hint", [
    (lambda: {"w": torch.ones(2), "sharded": _NoStorage(torch.ones(3))},
     r"tensor 'sharded' is a _NoStorage with no plain data to store", "plain tensor"),
    (lambda: torch.nn.LazyLinear(3), r"tensor '(weight|bias)': an uninitialized parameter", "call the model"),
    (lambda: {"m": torch.empty(2, device="meta")}, r"tensor 'm': a tensor on the meta device", None),
])
def test_tensors_without_plain_data_are_refused_by_name(repo, make, match, hint):
    """Un-run lazy modules, DTensors and other wrapper subclasses crashed the commit with torch's
    own ValueError/RuntimeError (exit 4); refusals did not say which tensor."""
    with pytest.raises(BadInput, match=match) as e:
        repo.commit({"core": make()}, message="x")
    assert hint is None or hint in e.value.hint
    assert repo.log() == []


@pytest.mark.parametrize("keep", [0, 400])
def test_a_tensor_whose_storage_was_freed_is_refused_not_read_past_its_end(repo, keep):
    """FSDP frees unsharded parameters by resizing their storage to 0: such a tensor committed the
    heap memory past its storage (a different 'model' each run) and fsck passed."""
    t = torch.full((1000,), 7.0)
    t.untyped_storage().resize_(keep)
    lin = torch.nn.Linear(10, 100)
    lin.weight.untyped_storage().resize_(keep)
    for state in ({"ok": torch.ones(3), "w": t}, lin):
        with pytest.raises(BadInput, match=fr"tensor '(w|weight)': its storage holds {keep} bytes, and its 1000 "
                                           r"elements need 4000: the storage was freed") as e:
            repo.commit({"core": state}, message="x")
        assert "summon_full_params" in e.value.hint
    assert repo.log() == [] and not list(repo.loose.ids())
    whole = torch.arange(12.0)  # views within their storage (offsets, strides) are stored as before
    views = {"tail": whole[8:], "strided": whole[::3], "t": whole.reshape(3, 4).t()}
    back = repo.load(repo.commit({"core": views}, message="views"), "core")
    assert all(torch.equal(back[k], v) for k, v in views.items())


def test_a_compiled_model_commits_as_the_model_it_wraps(repo):
    import cores
    core = cores.build("layercake", "tiny", seed=0).eval()
    cid = repo.commit({"core": torch.compile(core)}, message="compiled")
    assert set(repo.load(cid, "core")) == set(core.state_dict())  # not `_orig_mod.*`
    x = torch.randint(0, 256, (1, 9))
    with torch.no_grad():
        assert torch.equal(repo.load_model(cid, "core")(x), core(x))


@pytest.mark.parametrize("wrap", ["blocks compiled one by one", "DataParallel", "DataParallel of compiled"])
def test_a_wrapped_or_blockwise_compiled_model_commits_as_the_model_inside(repo, wrap):
    """DataParallel (as DDP) committed plain `module.*` tensors without the arch; blocks compiled
    one by one put `_orig_mod.` into names, and the commit was refused as not fitting (h99)."""
    import cores
    core = cores.build("layercake", "tiny", seed=0).eval()
    names = set(core.state_dict())
    model = core
    if "compiled" in wrap:
        for i, block in enumerate(core.blocks):
            core.blocks[i] = torch.compile(block)
    if "DataParallel" in wrap:
        model = torch.nn.DataParallel(core)
    cid = repo.commit({"core": model}, message=wrap)
    tree = repo.tree(cid, "core")
    assert set(tree["tensors"]) == names and tree["arch"] == "layercake"
    x = torch.randint(0, 256, (1, 9))
    with torch.no_grad():
        assert torch.equal(repo.load_model(cid, "core")(x), cores.build("layercake", "tiny", seed=0).eval()(x))


def test_a_plain_module_wrapped_or_compiled_by_blocks_keeps_its_own_names(repo):
    """Without an arch there is no builder whose names to match: the wrapper's names stay, so the
    state loads back into the object committed (h102)."""
    m = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    m[0] = torch.compile(m[0])
    dp = torch.nn.DataParallel(torch.nn.Sequential(torch.nn.Linear(4, 4)))
    for mod in (m, dp):
        back = repo.load(repo.commit({"m": mod}, message="plain"), "m")
        assert set(back) == set(mod.state_dict())
        mod.load_state_dict(back)


def test_a_model_sizing_a_tensor_by_its_data_commits(repo):
    """A trained bpe-transformer's tokenizer_blob is sized by its training: the fit check refused it
    by the fresh build's shape, though load_model (its own load hook) rebuilds it exactly (h102)."""
    import cores
    core = cores.build("bpe-transformer", config="tiny", seed=0)
    cores.train(core, bytes(range(256)) * 40, steps=1)
    assert core.state_dict()["tokenizer_blob"].numel() > 0
    back = repo.load_model(repo.commit({"core": core}, message="trained"), "core")
    assert all(torch.equal(back.state_dict()[k], v) for k, v in core.state_dict().items())
    from mvc import tensors
    tries = []
    real = tensors.loads_on_meta
    tensors.loads_on_meta = lambda *a: tries.append(1) or real(*a)
    try:
        repo.commit({"core": core}, message="again")  # (taken before: not built on meta again)
    finally:
        tensors.loads_on_meta = real
    assert tries == []
    core.register_buffer("junk", torch.ones(2))  # (what its builder does not make is still refused)
    with pytest.raises(BadInput, match="an extra tensor 'junk'"):
        repo.commit({"core": core}, message="junk")


def test_a_config_that_is_no_json_is_refused_as_bad_input(repo):
    import cores
    core = cores.build("layercake", "tiny", seed=0)
    core.mvc_config = {**core.mvc_config, "dtype": torch.float32}
    with pytest.raises(BadInput, match="cannot store this value"):  # (a raw TypeError, h102)
        repo.commit({"core": core}, message="x")


def test_a_wrapper_with_state_of_its_own_is_committed_as_is_and_said(repo):
    import cores
    core = cores.build("layercake", "tiny", seed=0)
    swa = torch.optim.swa_utils.AveragedModel(core)
    with pytest.warns(UserWarning, match="wraps a LayerCake.* of arch 'layercake': it is committed as plain tensors named "
                                         r"module\.\*, without that arch \(commit its \.module to keep it\)"):
        cid = repo.commit({"swa": swa}, message="swa")
    assert "n_averaged" in repo.load(cid, "swa") and repo.tree(cid, "swa").get("arch") is None


def test_an_abi_spec_that_is_not_one_is_refused(repo):
    m = torch.nn.Linear(2, 2)
    m.abi_spec = "v1"
    with pytest.raises(BadInput, match=r"Linear.abi_spec is a str without a text .hash"):
        repo.commit({"core": m}, message="x")


def test_an_optimizer_state_dict_commits_with_its_param_groups(repo):
    """DESIGN.md section 10: state tensors as state.<i>.<key>, param groups in tree metadata. An
    optimizer.state_dict() was refused (nested), and no route recorded lr, betas or weight decay."""
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.AdamW([{"params": [model.weight], "lr": 1e-3}, {"params": [model.bias], "weight_decay": 0.0}],
                            lr=3e-4, betas=(0.8, 0.95))
    before = repo.commit({"optimizer": opt.state_dict()}, message="step 0: no state yet")
    assert repo.load_optimizer(before)["state"] == {}
    for _ in range(2):
        model(torch.randn(3, 4)).sum().backward()
        opt.step()
    cid = repo.commit({"optimizer": opt.state_dict()}, message="step 2")
    tree = repo.tree(cid, "optimizer")
    assert tree["kind"] == "optimizer" and set(tree["tensors"]) == {
        f"state.{i}.{k}" for i in (0, 1) for k in ("step", "exp_avg", "exp_avg_sq")}
    assert [g["lr"] for g in tree["meta"]["param_groups"]] == [1e-3, 3e-4]
    again = torch.optim.AdamW([{"params": [model.weight]}, {"params": [model.bias]}], lr=1.0)
    again.load_state_dict(repo.load_optimizer(cid))
    want, got = opt.state_dict(), again.state_dict()
    assert [(g["lr"], tuple(g["betas"]), g["weight_decay"]) for g in got["param_groups"]] == \
        [(g["lr"], g["betas"], g["weight_decay"]) for g in want["param_groups"]]
    assert all(torch.equal(got["state"][i][k], want["state"][i][k]) for i in want["state"] for k in want["state"][i])
    with pytest.raises(BadInput, match="records no param groups"):
        repo.load_optimizer(repo.commit({"optimizer": {"state.0.step": torch.tensor(1.0)}}, message="flat"))


def test_an_optimizer_state_keyed_by_parameter_names_round_trips(repo):
    """torch.distributed.checkpoint's get_optimizer_state_dict keys the state by parameter names
    ("0.weight", with dots): it committed, then load_optimizer refused the commit it made. String
    keys that look like indices ("0") came back as ints."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU(), torch.nn.Linear(2, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(2, 3)).sum().backward()
    opt.step()
    named = get_optimizer_state_dict(model, opt)
    assert "0.weight" in named["state"]
    back = repo.load_optimizer(repo.commit({"optimizer": named}, message="named"))
    assert list(back["state"]) == list(named["state"])
    assert all(torch.equal(back["state"][p][k], named["state"][p][k]) for p in named["state"] for k in named["state"][p])
    again = torch.optim.Adam(model.parameters(), lr=1.0)
    set_optimizer_state_dict(model, again, back)
    assert again.param_groups[0]["lr"] == 1e-3
    assert all(torch.equal(again.state[p]["exp_avg"], opt.state[p]["exp_avg"]) for p in model.parameters())
    texts = {"state": {"0": {"step": torch.tensor(1.0)}, "1": {"step": torch.tensor(2.0)}},
             "param_groups": [{"params": ["0", "1"], "lr": 0.1}]}
    assert list(repo.load_optimizer(repo.commit({"optimizer": texts}, message="str keys"))["state"]) == ["0", "1"]
    with pytest.raises(BadInput, match=r"optimizer state key \(0, 1\) is a tuple"):
        repo.commit({"optimizer": {"state": {(0, 1): {"step": 1.0}}, "param_groups": []}}, message="x")


def test_plain_numbers_in_optimizer_state_come_back_as_they_were(repo):
    """Plain numbers became 0-dim float32 tensors: 0.1 came back 0.10000000149011612. Then 0-dim
    tensors: optimizer.load_state_dict casts those to the parameter's dtype (3 -> tensor(3.),
    0.1 -> float32), where it keeps a plain number as it is."""
    model = torch.nn.Linear(2, 1)
    state = {"state": {0: {"exp_avg": torch.ones(1, 2), "scale": 0.1, "third": 1 / 3, "count": 2 ** 62 + 1,
                           "on": True}}, "param_groups": [{"params": [0, 1], "lr": 0.1}]}
    back = repo.load_optimizer(repo.commit({"optimizer": state}, message="x"))
    got = back["state"][0]
    assert {k: (type(v), v) for k, v in got.items() if k != "exp_avg"} == {
        "scale": (float, 0.1), "third": (float, 1 / 3), "count": (int, 2 ** 62 + 1), "on": (bool, True)}
    assert isinstance(got["exp_avg"], torch.Tensor) and torch.equal(got["exp_avg"], torch.ones(1, 2))
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    opt.load_state_dict(back)
    assert opt.state[model.weight]["scale"] == 0.1 and opt.state[model.weight]["count"] == 2 ** 62 + 1
    listed = {"state": {0: {"history": [1.0, 2.0, 3.0]}}, "param_groups": [{"params": [0], "lr": 0.1}]}
    got = repo.load_optimizer(repo.commit({"optimizer": listed}, message="a list"))["state"][0]["history"]
    assert type(got) is list and got == [1.0, 2.0, 3.0]
    listed["state"][0]["history"] = [3, 0.1, 0.2, 1e-300]  # lists of floats were rounded to float32
    got = repo.load_optimizer(repo.commit({"optimizer": listed}, message="floats"))["state"][0]["history"]
    assert got == [3.0, 0.1, 0.2, 1e-300] and all(type(x) is float for x in got)  # (one type: floats)
    listed["state"][0]["history"] = [1 + 0.1j]  # (complex64 would round it, complex128 is not stored)
    with pytest.raises(BadInput, match="complex"):
        repo.commit({"optimizer": listed}, message="complex")


def test_lists_and_tuples_in_optimizer_state_come_back_as_they_were(repo):
    """A list or tuple of numbers came back as a tensor (an optimizer calling .append on it broke
    later), and LBFGS's state (lists of tensors, `al` holding Nones) was refused with a cut message
    ('([tensor(5.9e-08), tensor(1.2e-06),)')."""
    state = {"state": {0: {"step": 3, "history": [0.5, 0.25], "window": (1, 2), "seen": [], "grid": ((1, 2), (3, 4)),
                           "dirs": [torch.ones(2), torch.zeros(2)], "al": [None, torch.full((1,), 2.0), None],
                           "empty": (None, None)}},
             "param_groups": [{"params": [0], "lr": 0.1}]}
    got = repo.load_optimizer(repo.commit({"optimizer": state}, message="lists"))["state"][0]
    assert {k: (type(v), v) for k, v in got.items() if k not in ("dirs", "al")} == {
        "step": (int, 3), "history": (list, [0.5, 0.25]), "window": (tuple, (1, 2)), "seen": (list, []),
        "grid": (tuple, ((1, 2), (3, 4))), "empty": (tuple, (None, None))}
    assert type(got["dirs"]) is list and [x.tolist() for x in got["dirs"]] == [[1.0, 1.0], [0.0, 0.0]]
    assert got["al"][0] is None and got["al"][2] is None and got["al"][1].tolist() == [2.0]
    # LBFGS resumes where it stopped: the same next step as the optimizer that was committed
    torch.manual_seed(0)
    model, x = torch.nn.Linear(3, 1), torch.randn(8, 3)

    def closure(m, opt):
        def f():
            opt.zero_grad()
            loss = (m(x) ** 2).mean()
            loss.backward()
            return loss
        return f
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=3, history_size=4)
    for _ in range(2):
        opt.step(closure(model, opt))
    twin = torch.nn.Linear(3, 1)
    twin.load_state_dict(model.state_dict())
    opt2 = torch.optim.LBFGS(twin.parameters(), lr=0.5, max_iter=3, history_size=4)
    opt2.load_state_dict(repo.load_optimizer(repo.commit({"optimizer": opt.state_dict()}, message="lbfgs")))
    opt.step(closure(model, opt))
    opt2.step(closure(twin, opt2))
    assert torch.equal(model.weight, twin.weight) and torch.equal(model.bias, twin.bias)
    with pytest.raises(BadInput, match=r"mixing tensors or Nones with a str, 'x', which mvc does not store"):
        repo.commit({"optimizer": {"state": {0: {"m": [torch.ones(1), "x"]}}, "param_groups": []}}, message="x")
    with pytest.raises(BadInput, match="outside int64's range"):
        repo.commit({"optimizer": {"state": {0: {"n": 2 ** 64}}, "param_groups": []}}, message="x")
    with pytest.raises(BadInput, match=r"\{'k': 1\}\), neither a tensor"):
        repo.commit({"optimizer": {"state": {0: {"d": {"k": 1}}}, "param_groups": []}}, message="x")
    deep = 0.5
    for _ in range(3000):  # (torch.load takes it; the walks recursed: RecursionError, exit 4, h53)
        deep = [deep]
    with pytest.raises(BadInput, match="state nests deeper than 64 levels"):
        repo.commit({"optimizer": {"state": {0: {"v": deep}}, "param_groups": []}}, message="x")
    with pytest.raises(BadInput, match="param groups nest deeper than 64 levels"):
        repo.commit({"optimizer": {"state": {}, "param_groups": [{"params": [], "x": deep}]}}, message="x")
    with pytest.raises(BadInput, match=r"keys mix parameter indices and names, e.g. 0 and '1'"):
        repo.commit({"optimizer": {"state": {0: {"m": torch.ones(1)}, "1": {"m": torch.ones(1)}},
                                   "param_groups": []}}, message="x")
    with pytest.raises(BadInput, match="holding tensors in nested lists"):  # (they came back as numbers: h57)
        repo.commit({"optimizer": {"state": {0: {"m": [[torch.ones(1)], [torch.zeros(1)]]}}, "param_groups": []}},
                    message="x")
    with pytest.raises(BadInput, match="which another value of the state takes"):
        repo.commit({"optimizer": {"state": {0: {"a": [torch.ones(1)], "a.0": torch.ones(1)}}, "param_groups": []}},
                    message="x")


def test_tuple_settings_of_an_optimizer_come_back_as_tuples(repo):
    """Adam's betas, Rprop's etas and step_sizes came back as lists (JSON has no tuples): the resumed
    optimizer's state_dict() differed from the one committed."""
    model = torch.nn.Linear(3, 2)
    groups = lambda: [{"params": [model.weight]}, {"params": [model.bias]}]  # noqa: E731
    for opt in (torch.optim.Adam([{"params": [model.weight]}, {"params": [model.bias], "betas": (0.5, 0.6)}],
                                 betas=(0.8, 0.95)),
                torch.optim.Rprop(groups(), etas=(0.4, 1.3), step_sizes=(1e-6, 40))):
        model(torch.randn(2, 3)).sum().backward()
        opt.step()
        again = type(opt)(groups(), lr=1.0)
        again.load_state_dict(repo.load_optimizer(repo.commit({"optimizer": opt.state_dict()}, message="x")))
        assert [{k: v for k, v in g.items() if k != "params"} for g in again.state_dict()["param_groups"]] == \
            [{k: v for k, v in g.items() if k != "params"} for g in opt.state_dict()["param_groups"]]
        assert all(type(v) is tuple for g in again.param_groups for v in (g.get("betas"), g.get("etas")) if v)


def test_a_tensor_learning_rate_comes_back_as_a_tensor(repo):
    """A 0-dim tensor setting (lr=torch.tensor(...), for capturable/fused Adam) came back a float:
    the resumed optimizer took another code path and was not bit-exact."""
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=torch.tensor(0.01), betas=(0.9, 0.99))
    model(torch.randn(2, 3)).sum().backward()
    opt.step()
    back = repo.load_optimizer(repo.commit({"optimizer": opt.state_dict()}, message="x"))
    lr = back["param_groups"][0]["lr"]
    assert isinstance(lr, torch.Tensor) and lr.dtype == torch.float32 and torch.equal(lr, torch.tensor(0.01))
    again = torch.optim.Adam(model.parameters(), lr=torch.tensor(1.0))
    again.load_state_dict(back)
    assert torch.equal(again.param_groups[0]["lr"], torch.tensor(0.01))


def test_a_setting_shaped_like_a_recorded_tensor_is_refused_not_misread(repo):
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.param_groups[0]["custom"] = {"__tensor__": "x", "dtype": "float32"}
    with pytest.raises(BadInput, match="uses the key '__tensor__'"):
        repo.commit({"optimizer": opt.state_dict()}, message="x")
    assert repo.log() == []


@pytest.mark.parametrize("numel,piece", [(1000, None), (1 << 20, 1 << 16)])  # one write; piece by piece
def test_a_tensor_changed_while_it_is_committed_is_refused_and_nothing_is_stored(repo, monkeypatch, numel, piece):
    """Another thread training a tensor that repo.commit stores: the blob was hashed, then written
    from the changed memory, and stored under an id its bytes do not hash to (fsck damage, and
    objects are write-once: a later commit of those bytes found the bad file)."""
    import os

    import mvc.components
    from mvc.errors import ChangedWhileStored
    if piece:
        monkeypatch.setattr(mvc.components, "PIECE", piece)  # the large-tensor path, at test size
    w = torch.zeros(numel)
    real = type(repo.store).put

    def put(self, *buffers, **kw):  # a training step lands between hashing and writing
        if kw.get("recheck") and any(memoryview(b).nbytes >= w.nbytes for b in buffers):
            w.add_(1)
        return real(self, *buffers, **kw)

    monkeypatch.setattr(type(repo.store), "put", put)
    with pytest.raises(ChangedWhileStored, match="tensor 'w' changed while it was being committed"):
        repo.commit({"model": {"b": torch.ones(2), "w": w}}, message="x")
    monkeypatch.undo()
    assert repo.log() == [] and repo.fsck()["ok"]
    assert [f for _d, _s, fs in os.walk(os.path.join(repo.dir, "objects")) for f in fs] == []
    cid = repo.commit({"model": {"b": torch.ones(2), "w": w}}, message="between steps")
    assert torch.equal(repo.load(cid, "model", rehash=True)["w"], w)


def test_a_step_between_two_tensors_blobs_is_refused_not_a_model_of_two_steps(repo, monkeypatch):
    """Each blob is checked as it is written, so a step landing after one tensor was stored and
    before the next began made a commit of two optimizer steps without a word (probe h7)."""
    import mvc.components
    from mvc.errors import ChangedWhileStored
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    real, stored = mvc.components.Ingest._put_blob, []

    def put_blob(self, *a, **kw):
        oid = real(self, *a, **kw)
        stored.append(oid)
        if len(stored) == 1:  # the trainer's step, after the first blob and before the others
            model(torch.ones(1, 4)).sum().backward()
            opt.step()
        return oid
    monkeypatch.setattr(mvc.components.Ingest, "_put_blob", put_blob)
    monkeypatch.setattr(mvc.components, "STORE_WORKERS", 1)  # (one blob after the other)
    with pytest.raises(ChangedWhileStored, match="changed while the component was being committed .4 tensors did."):
        repo.commit({"core": model}, message="mid-step")
    assert repo.log() == []
    monkeypatch.undo()
    w = torch.arange(12.0).reshape(3, 4)
    snapshot = w.t().clone()

    def step_on_the_copied_one(self, *a, **kw):  # w.t() is stored from a copy taken before
        oid = real(self, *a, **kw)
        w.add_(1)
        return oid
    monkeypatch.setattr(mvc.components.Ingest, "_put_blob", step_on_the_copied_one)
    cid = repo.commit({"t": {"wt": w.t(), "b": torch.ones(2)}}, message="a snapshot taken whole")  # (review)
    assert torch.equal(repo.load(cid, "t")["wt"], snapshot)
    monkeypatch.undo()
    with torch.inference_mode():  # inference tensors have no version counter: committed as they are
        frozen = {"w": torch.ones(3)}
    cid = repo.commit({"core": model, "frozen": frozen}, message="between steps")
    assert torch.equal(repo.load(cid, "core")["0.weight"], model[0].weight.detach())


@pytest.mark.skipif((__import__("os").cpu_count() or 1) < 2, reason="one worker thread stores one run at a time")
@pytest.mark.parametrize("order", ["small first", "big first"])
def test_an_item_failing_in_a_commit_stops_a_big_one_being_stored_at_once(tmp_path, order):
    """Items are stored a run at a time, biggest first; the first failure (a tensor changed during the
    commit, say) must stop a big tensor's store at its next piece, not after it was written whole."""
    import time
    from mvc.components import Ingest
    from mvc.store import LooseStore
    ing = Ingest(LooseStore(str(tmp_path), fsync=False))
    pieces = []

    def put(item, spare_cores):
        if item == "small":
            time.sleep(0.05)
            raise ValueError("tensor changed")
        for k in range(100):  # a big tensor: 100 pieces, progress after each (which raises once stopped)
            time.sleep(0.02)
            ing.progress(1)
            pieces.append(k)
        return "id"
    items = ["small", "big"] if order == "small first" else ["big", "small"]
    with pytest.raises(ValueError, match="tensor changed"):
        ing._put_all(items, lambda x: 10 if x == "small" else 500 << 20, put)
    assert len(pieces) < 50  # (stopped: 2 s of pieces otherwise)


def test_a_tree_holding_lists_of_tensors_is_format_2_and_forged_lengths_are_refused(repo, monkeypatch):
    """An mvc reading format 1 only took the items `state.0.al.1` of a list for keys `al.1`, a
    misread (DESIGN.md section 3: a newer format is refused, never misread); and a forged length
    of 10**12 made load_optimizer build a list of a trillion Nones (h57)."""
    import mvc.objects
    from damage import forge
    from mvc.errors import CorruptObject, FormatTooNew
    cid = repo.commit({"optimizer": {"state": {0: {"al": [None, torch.ones(1)]}}, "param_groups": []}}, message="x")
    tree = repo.tree(cid, "optimizer")
    assert tree["format"] == 2 and repo.read_commit(cid)["format"] == 1
    numbers = repo.commit({"optimizer": {"state": {0: {"h": [0.5]}}, "param_groups": []}}, message="numbers")
    assert repo.tree(numbers, "optimizer")["format"] == 1  # (read as before by any mvc: a tensor)
    with monkeypatch.context() as m:
        m.setattr(mvc.objects, "FORMAT_VERSION", 1)  # an mvc reading format 1 only
        with pytest.raises(FormatTooNew, match="has format 2; this mvc reads up to 1"):
            mvc.Repo(repo.root).load_optimizer(cid)
    for spec in ({"type": "list", "length": 10 ** 12, "none": [0]}, {"type": "list", "length": 1, "none": []},
                 {"type": "list", "length": 3, "none": [0, 5]}, {"type": "list", "length": 2, "none": [0, 1]},
                 {"type": "list", "length": "2", "none": [0]}):
        forged = forge(repo, {**tree, "meta": {**tree["meta"], "sequence_state": {"state.0.al": spec}}})
        bad = repo.commit({}, trees={"optimizer": forged}, message="forged")
        with pytest.raises(CorruptObject, match="sequence_state"):
            mvc.Repo(repo.root).load_optimizer(bad)


def test_none_values_and_numpy_settings_of_an_optimizer_come_back_as_they_were(repo, tmp_path):
    """SGD without momentum kept {'momentum_buffer': None} per parameter (torch <= 2.2): such a state
    could not be committed (h114 06); an lr computed in numpy was refused with an error naming no
    setting (h114 02). A None comes back None; a numpy scalar as the number it holds."""
    import numpy as np
    state = {"state": {0: {"momentum_buffer": None, "step": torch.tensor(3.0)}, 1: {"momentum_buffer": None}},
             "param_groups": [{"lr": np.float32(0.5), "momentum": 0, "nested": {"gamma": np.float64(0.25)},
                               "params": [0, 1]}]}
    repo.commit({"optimizer": state}, message="sgd")
    back = repo.load_optimizer("HEAD")
    assert back["state"][1] == {"momentum_buffer": None} and back["state"][0]["momentum_buffer"] is None
    assert torch.equal(back["state"][0]["step"], torch.tensor(3.0))
    assert back["param_groups"] == [{"lr": 0.5, "momentum": 0, "nested": {"gamma": 0.25}, "params": [0, 1]}]
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.load_state_dict(back)  # (as torch takes it)
    torch.save(opt.state_dict() | {"state": {0: {"momentum_buffer": None}}}, tmp_path / "opt.pt")  # (a file)
    repo.commit({"optimizer": str(tmp_path / "opt.pt")}, message="from a file")
    assert repo.load_optimizer("HEAD")["state"] == {0: {"momentum_buffer": None}}


def test_tensors_come_back_on_the_cpu_whatever_torch_s_default_device(repo):
    """A zero-size tensor, a tensor lr and an optimizer state's list of numbers were made on torch's
    default device: inside `with torch.device("meta")` (build on meta, then load) they came back on
    meta (an lr's value lost), or the list was refused as a meta tensor (h114 05)."""
    state = {"state": {0: {"hist": [1.0, 2.0], "step": torch.tensor(1.0)}},
             "param_groups": [{"lr": torch.tensor(0.01), "params": [0]}]}
    with torch.device("meta"):
        repo.commit({"optimizer": state, "model": {"empty": torch.zeros(0, 3, device="cpu"),
                                                   "w": torch.ones(2, device="cpu")}}, message="m")
        loaded = repo.load("HEAD", "model")
        opt = repo.load_optimizer("HEAD")
    assert {t.device.type for t in loaded.values()} == {"cpu"} and loaded["empty"].shape == (0, 3)
    lr = opt["param_groups"][0]["lr"]
    assert lr.device.type == "cpu" and torch.equal(lr, torch.tensor(0.01))
    assert opt["state"][0]["hist"] == [1.0, 2.0]
