"""The public cores API under misuse: each bad argument is a TypeError / ValueError naming it, never a
deep torch error or a silently wrong model (found by probing cores.build / forward / train / bpb)."""
import math

import pytest
import torch

import cores
from cores.train import TrainingDiverged

DATA = bytes((i * 7 + i // 13) % 251 for i in range(4000))
FAST = dict(batch_size=2, seq_len=32, progress=False)


@pytest.mark.parametrize("kwargs, field", [
    ({"seed": -1}, "seed"),
    ({"seed": 1.5}, "seed"),          # was truncated to 1 silently
    ({"seed": True}, "seed"),
    ({"seed": 2 ** 70}, "seed"),      # was torch's "Overflow when unpacking long long"
    ({"n_layer": -1}, "n_layer"),     # was ZeroDivisionError
    ({"n_layer": 1.5}, "n_layer"),
    ({"d_model": 0}, "d_model"),      # was a zero-width model
    ({"d_model": -8}, "d_model"),
    ({"n_head": 0}, "n_head"),        # was ZeroDivisionError
    ({"d_model": 97}, "n_head"),      # was an AssertionError
    ({"d_local": 0}, "d_local"),
    ({"local_taps": 0}, "local_taps"),
    ({"block_bytes": 0}, "block_bytes"),
    ({"canonical": "no"}, "canonical"),  # a truthy string built a canonical core
    ({"lr": float("nan")}, "lr"),
    ({"lr": 1e39}, r"lr must be <= 1e\+30"),  # built, then its first step overflowed float32 (h58)
    ({"anchor_weight": float("nan")}, "anchor_weight"),  # NaN > 0 is False: the anchor loss was dropped
    ({"rope_base": 0.0}, "rope_base"),  # NaN rotary tables
    ({"ngram_buckets": -3}, "ngram_buckets"),
    ({"preset": "small"}, "config="),  # was "make_config() got multiple values for argument 'preset'"
])
def test_build_rejects_bad_settings_naming_them(kwargs, field):
    with pytest.raises((TypeError, ValueError), match=field):
        cores.build("layercake", config="tiny", **kwargs)


@pytest.mark.parametrize("arch, kwargs, field", [
    ("byte-transformer", {"n_head": 5}, "n_head"),
    ("byte-transformer", {"d_model": 0}, "d_model"),
    ("byte-transformer", {"seed": 1.5}, "seed"),
    ("bpe-transformer", {"vocab_size": 10}, "vocab_size"),  # every byte is a token: >= 256
])
def test_baseline_build_rejects_bad_settings(arch, kwargs, field):
    with pytest.raises((TypeError, ValueError), match=field):
        cores.build(arch, **kwargs)


def test_explicit_seed_with_a_config_dict_is_used():
    a = cores.build("layercake", seed=0)
    b = cores.build("layercake", config=a.mvc_config, seed=5)  # the seed was silently ignored
    assert b.mvc_config["seed"] == 5
    assert not torch.equal(a.byte_emb.weight, b.byte_emb.weight)
    same = cores.build("layercake", config=a.mvc_config)
    assert torch.equal(a.byte_emb.weight, same.byte_emb.weight)


@pytest.mark.parametrize("arch", ["layercake", "byte-transformer"])
@pytest.mark.parametrize("bad, error, words", [
    (torch.full((1, 8), 256), ValueError, "0..255"),
    (torch.full((1, 8), -1), ValueError, "0..255"),
    (torch.zeros(1, 8), TypeError, "integer"),
    (torch.zeros(1, 8, dtype=torch.bool), TypeError, "integer"),
    (torch.zeros(8, dtype=torch.long), ValueError, r"x\[None\]"),
    (torch.zeros(1, 1, 8, dtype=torch.long), ValueError, r"\(B, T\)"),
    (torch.zeros(1, 0, dtype=torch.long), ValueError, "empty"),
    (torch.zeros(0, 8, dtype=torch.long), ValueError, "empty"),
    (b"hello", TypeError, "LongTensor"),
])
def test_forward_checks_byte_ids(arch, bad, error, words):
    core = cores.build(arch).eval()
    with pytest.raises(error, match="byte_ids") as info:
        core(bad)
    assert info.match(words)


def test_forward_with_abi_checks_inputs():
    core = cores.build("layercake").eval()
    with pytest.raises(ValueError, match="byte_ids"):
        core.forward_with_abi(torch.full((1, 8), 300))
    with pytest.raises(ValueError, match="abi_delta"):
        core.forward_with_abi(torch.zeros(1, 8, dtype=torch.long), torch.zeros(1, 3, 64))


def test_narrow_integer_ids_give_the_same_logits():
    core = cores.build("layercake").eval()
    x = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = core(x)
        assert torch.equal(core(x.to(torch.uint8)), ref)
        assert torch.equal(core(x.int()), ref)


@pytest.mark.parametrize("arch", ["layercake", "byte-transformer"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_cores_run_in_other_dtypes(arch, dtype):
    """The cached float32 rotary tables follow the activations (a bf16 model failed in attention)."""
    core = cores.build(arch).to(dtype).eval()
    x = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = core(x)
    assert out.dtype == dtype and bool(torch.isfinite(out).all())
    assert len(core.generate(b"hello", 3)) == 3


@pytest.mark.parametrize("arch", ["layercake", "byte-transformer"])
def test_cores_follow_their_device(arch):
    """Nothing in the forward pins a tensor to the CPU (the meta device stands in for CUDA here)."""
    core = cores.build(arch).eval().to("meta")
    out = core(torch.zeros(2, 12, dtype=torch.long, device="meta"))
    assert out.device.type == "meta" and tuple(out.shape) == (2, 12, 256)


@pytest.mark.parametrize("data, error, words", [
    (DATA.decode("latin-1"), TypeError, "encode"),
    (torch.tensor(list(DATA[:500])), TypeError, "tensor"),
    ([1, 2, 3], TypeError, "list"),
    (b"", ValueError, "empty"),  # was a ZeroDivisionError
    (b"a", ValueError, "too short: 0 units"),  # was a ZeroDivisionError (the held-out byte left none)
])
def test_train_checks_data(data, error, words):
    with pytest.raises(error, match=words):
        cores.train(cores.build("layercake"), data, steps=1, **FAST)


@pytest.mark.parametrize("kwargs, error, field", [
    ({"steps": 1.5}, TypeError, "steps"),     # was 1 step, silently
    ({"steps": "2"}, TypeError, "steps"),
    ({"steps": 0}, ValueError, "steps"),
    ({"seed": -1}, ValueError, "seed"),
    ({"seed": 2 ** 64}, ValueError, "seed"),
    ({"lr": float("inf")}, ValueError, "lr"),  # trained to NaN weights and returned
    ({"lr": float("nan")}, ValueError, "lr"),
    ({"lr": -1.0}, ValueError, "lr"),
    ({"lr": 1e39}, ValueError, r"lr must be <= 1e\+30"),
    ({"weight_decay": float("nan")}, ValueError, "weight_decay"),
    ({"grad_clip": float("nan")}, ValueError, "grad_clip"),
    ({"warmup": -1}, ValueError, "warmup"),
    ({"min_lr_frac": 2.0}, ValueError, "min_lr_frac"),
    ({"batch_size": 0}, ValueError, "batch_size"),  # was a reshape error inside the model
    ({"seq_len": 1}, ValueError, "seq_len"),
])
def test_train_checks_settings(kwargs, error, field):
    settings = {**FAST, "steps": 1, **kwargs}
    with pytest.raises(error, match=field):
        cores.train(cores.build("layercake"), DATA, **settings)


def test_train_refuses_a_non_core():
    with pytest.raises(TypeError, match="cores.build"):
        cores.train(torch.nn.Linear(2, 2), DATA, steps=1, **FAST)


def test_train_refuses_unmeasurable_eval_data_before_training():
    core = cores.build("layercake")
    before = {k: v.clone() for k, v in core.state_dict().items()}
    with pytest.raises(ValueError, match="evaluate=False"):
        cores.train(core, DATA, steps=1, eval_data=b"x", **FAST)
    assert all(torch.equal(before[k], v) for k, v in core.state_dict().items())  # nothing trained


def test_divergence_is_an_error_not_nan_metrics():
    core = cores.build("layercake")
    with pytest.raises(TrainingDiverged, match="diverged at step") as info:
        cores.train(core, DATA, steps=6, lr=1e6, **FAST)
    assert isinstance(info.value, ValueError)
    assert 1 <= info.value.step <= 6 and math.isnan(info.value.metrics["loss"])
    assert info.value.metrics["steps"] == info.value.step  # stopped at the first non-finite loss


def test_short_windows_train_without_nan():
    """A window shorter than one patch has no anchor target: no anchor term (the mean of nothing was NaN)."""
    core = cores.build("layercake")
    m = cores.train(core, DATA, steps=2, batch_size=2, seq_len=3, progress=False)
    assert math.isfinite(m["loss"]) and math.isfinite(m["heldout_bpb"])


@pytest.mark.parametrize("window", [0, 1, -4, 2.5])
def test_bpb_checks_window(window):
    with pytest.raises((TypeError, ValueError), match="window_bytes"):
        cores.build("layercake").bpb(DATA[:100], window_bytes=window)


def test_bpb_and_generate_check_their_inputs():
    core = cores.build("layercake")
    with pytest.raises(TypeError, match="encode"):
        core.bpb(DATA[:100].decode("latin-1"))
    with pytest.raises(TypeError, match="prompt"):
        core.generate("hello", 3)
    with pytest.raises(ValueError, match="n_bytes"):
        core.generate(b"hello", -1)
    with pytest.raises(ValueError, match="prompt"):  # was an IndexError in the attention cache
        cores.build("byte-transformer").generate(b"", 3)


@pytest.mark.parametrize("arch", ["layercake", "byte-transformer", "bpe-transformer"])
def test_build_leaves_the_global_rng_alone(arch):
    """Weights come from private generators, but torch's constructors drew from the global RNG first,
    so building a core shifted the user's own random stream."""
    torch.manual_seed(0)
    want = torch.randn(4)
    torch.manual_seed(0)
    cores.build(arch)
    assert torch.equal(torch.randn(4), want)


@pytest.mark.parametrize("kind, kwargs, error, field", [
    ("lowrank", {"rank": -3}, ValueError, "rank"),         # was a silent rank 1
    ("lowrank", {"rank": 1.5}, TypeError, "rank"),         # was a silent rank 1
    ("lowrank", {"rank": 0}, ValueError, "rank must be"),  # was "needs rank= or ratio="
    ("lowrank", {"ratio": -1.0}, ValueError, "ratio"),     # was a silent rank 1
    ("lowrank", {"ratio": float("nan")}, ValueError, "ratio"),
    ("lowrank", {"rank": {"blocks.0.mlp.fc": -1}}, ValueError, "rank"),
    ("harmonic", {"n_components": -1}, ValueError, "n_components"),  # was a torch "zeros" error
    ("harmonic", {"n_components": 4, "steps": -1}, ValueError, "steps"),
])
def test_convert_checks_budgets(kind, kwargs, error, field):
    from cores.convert import convert
    with pytest.raises(error, match=field):
        convert(cores.build("layercake"), kind, "blocks.0.mlp.fc", **kwargs)


@pytest.mark.parametrize("layers, kwargs, error, words", [
    (["blocks.0.mlp.fc", "blocks.0.mlp.projj"], {}, ValueError, "'blocks.0.mlp.projj'"),  # was ignored
    (["blocks.9.*", "nothing"], {}, ValueError, "'blocks.9.\\*', 'nothing'"),  # each one is named
    ([], {}, ValueError, "layers=None"),             # converted every layer, as None does
    (5, {}, TypeError, "layers must be"),            # was "'int' object is not iterable"
    ([5], {}, TypeError, "layers must be"),
    ("blocks.0.mlp.fc", {"calib": "text " * 40}, TypeError, "calib must be bytes"),  # was "string argument ..."
])
def test_convert_checks_layers_and_calib(layers, kwargs, error, words):
    from cores.convert import convert
    with pytest.raises(error, match=words):
        convert(cores.build("layercake"), "lowrank", layers, rank=2, **kwargs)


def test_abi_spec_from_dict_names_missing_fields():
    from cores.abi import AbiSpec
    d = cores.build("layercake").abi_spec.to_dict()
    with pytest.raises(ValueError, match="missing fields.*head_hash"):  # was KeyError('head_hash')
        AbiSpec.from_dict({k: v for k, v in d.items() if k != "head_hash"})
    with pytest.raises(ValueError, match="anchor_spec"):
        AbiSpec.from_dict({**d, "anchor_spec": None})
    with pytest.raises(TypeError, match="expected a dict"):
        AbiSpec.from_dict(None)
    assert AbiSpec.from_dict(d).hash == cores.build("layercake").abi_spec.hash


def test_bpe_forward_checks_token_ids():
    core = cores.build("bpe-transformer").eval()  # vocab 1024
    with pytest.raises(ValueError, match=r"token_ids must hold values 0\.\.1023"):  # was an IndexError
        core(torch.full((1, 4), 1024))
    assert tuple(core(torch.full((1, 4), 1023)).shape) == (1, 4, 1024)


# -- a stored tree's arch config is untrusted (a remote may send any) ----------------------------------
def _core_with_config(repo, edit):
    import json as _json
    core = cores.build("layercake", config="tiny", seed=0)
    cid = repo.commit({"core": core}, message="core")
    c = repo.read_commit(cid)
    tree = _json.loads(_json.dumps(repo.read_tree(c["components"]["core"])))
    edit(tree)
    from mvc.objects import canonical_json
    tid = repo.store.put(canonical_json(tree))  # as another program would (write_object refuses it)
    repo.refs.update("refs/heads/main", repo.write_object({**c, "parents": [cid], "components": {"core": tid}}))
    return tree


@pytest.mark.parametrize("edit, match", [
    (lambda t: t["config"].update(d_model=96_000_000), "records a config of .* parameters, but stores"),
    (lambda t: t["config"].update(d_model="96"), "records a config its arch cannot build"),
])
def test_load_model_refuses_an_edited_config_before_allocating(repo, edit, match):
    from mvc.errors import BadInput
    _core_with_config(repo, edit)
    with pytest.raises(BadInput, match=match):  # before: a 36 GB allocation / a raw TypeError (exit 4)
        repo.load_model("HEAD", "core")


def test_a_tree_whose_config_is_not_an_object_is_malformed(repo):
    from mvc.errors import CorruptObject
    _core_with_config(repo, lambda t: t.update(config="tiny"))
    with pytest.raises(CorruptObject, match="'config' must be a JSON object"):
        repo.load_model("HEAD", "core")


def test_a_builder_that_cannot_run_on_the_meta_device_is_left_to_the_real_build():
    from mvc.tensors import precheck_build

    def make():  # e.g. initialised through numpy, which meta tensors refuse (TypeError)
        if torch.empty(0).device.type == "meta":
            raise TypeError("can't convert meta device type tensor to numpy")
        return torch.nn.Linear(2, 2)

    precheck_build(make, {"tensors": {"w": {"shape": [2, 2]}}}, "x")  # before: refused as a bad config


def test_a_config_whose_parameters_exceed_the_machines_memory_is_refused_before_allocating():
    """ngram_buckets=10**12 failed inside torch's allocator ("tried to allocate 416000000000
    bytes"), naming no setting; with the memory it would have allocated it (h58)."""
    with pytest.raises(ValueError, match=r"layercake: this config's parameters take .* GB, more than this "
                                         r"machine's .* \(the largest, ngram\."):
        cores.build("layercake", config="tiny", seed=0, ngram_buckets=10 ** 12)
    assert sum(p.numel() for p in cores.build("layercake", config="tiny", seed=0).parameters()) > 0


def test_a_config_whose_parameter_sizes_overflow_is_refused_before_allocating():
    """d_model=10**9 overflows torch's byte count even on the meta device; the memory check
    skipped such a build, which then failed in the allocator naming no setting (h85)."""
    with pytest.raises(ValueError, match=r"layercake: this config asks for a parameter too large to count in "
                                         r"bytes \(Storage size calculation overflowed .*check the sizes it sets"):
        cores.build("layercake", config="tiny", seed=0, d_model=10 ** 9)
