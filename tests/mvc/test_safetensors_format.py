"""The strict safetensors pre-parser refuses every malformed layout and accepts real files."""
import json
import struct

import pytest
import torch
from safetensors.torch import save, load

from mvc import safetensors_format as stf
from mvc.errors import BadInput


def _file(header: dict, data: bytes, raw_header: bytes | None = None) -> bytes:
    h = raw_header if raw_header is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


def _parse(blob: bytes):
    return stf.parse_header(blob, len(blob), "test.safetensors")


def test_accepts_real_file_with_metadata():
    blob = save({"a": torch.ones(2, 3), "b": torch.zeros(4, dtype=torch.bfloat16)}, metadata={"k": "v"})
    h = _parse(blob)
    assert [t.begin for t in h.tensors] == sorted(t.begin for t in h.tensors)
    assert h.metadata == {"k": "v"}
    assert {t.name: t.shape for t in h.tensors} == {"a": (2, 3), "b": (4,)}


@pytest.mark.parametrize("header,data,match", [
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, "past the end"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12, "overlaps"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12, "gap"),
    ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, "needs 12"),
    ({"a": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, "unknown dtype"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "__metadata__": {"k": 1}}, b"\0" * 8,
     "strings"),
    ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8, "invalid shape"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, b"\0" * 8, "invalid data_offsets"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 12, "trailing"),
])
def test_refuses_malformed(header, data, match):
    with pytest.raises(BadInput, match=match):
        _parse(_file(header, data))


def test_refuses_duplicate_names_the_reference_reader_would_accept():
    raw = (b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
           b'"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}')
    blob = _file({}, b"\0" * 8, raw)
    with pytest.raises(BadInput, match="duplicate"):
        _parse(blob)


def test_refuses_absurd_header_size_and_garbage():
    with pytest.raises(BadInput, match="absurd"):
        _parse(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(BadInput, match="not a safetensors"):
        _parse(b"abc")
    with pytest.raises(BadInput, match="JSON"):
        _parse(_file({}, b"", b"{nope"))
    with pytest.raises(BadInput, match="UTF-8"):
        _parse(_file({}, b"", b"{\xff}"))


@pytest.mark.parametrize("zipped", [True, False])
def test_a_pytorch_checkpoint_named_safetensors_is_named_for_what_it_is(tmp_path, zipped):
    """torch.save's file under a .safetensors name was refused as an "absurd header size"."""
    path = tmp_path / "model.safetensors"
    torch.save({"w": torch.ones(3)}, path, _use_new_zipfile_serialization=zipped)
    with pytest.raises(BadInput, match="a PyTorch checkpoint .* not a safetensors file") as e:
        _parse(path.read_bytes())
    assert "name it .pt or .bin" in e.value.hint


def test_canonical_blob_is_deterministic_and_loadable():
    t = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    prefix = stf.blob_prefix("F32", (2, 3))
    blob = prefix + t.numpy().tobytes()
    assert prefix == stf.blob_prefix("F32", (2, 3))
    assert len(prefix) % 8 == 0
    loaded = load(blob)
    assert list(loaded) == [stf.BLOB_TENSOR_NAME] and torch.equal(loaded["tensor"], t)
    e = stf.parse_blob(blob)
    assert (e.begin, e.end) == (len(prefix), len(blob))


def test_build_header_round_trips_through_safetensors():
    prefix, offsets = stf.build_header([("x", "F16", (3,)), ("y", "I64", (2, 2))], {"m": "v"})
    data = torch.ones(3, dtype=torch.float16).numpy().tobytes() + torch.arange(4).numpy().tobytes()
    loaded = load(prefix + data)
    assert torch.equal(loaded["y"], torch.arange(4).reshape(2, 2))
    assert offsets == [(0, 6), (6, 38)]


def test_remembered_blob_parses_still_refuse_a_wrong_size():
    """parse_blob remembers parses by header bytes and size: a blob whose header was parsed before
    but whose data is short or long must still be refused."""
    prefix = stf.blob_prefix("F32", (3, 4))
    good = prefix + bytes(48)
    e = stf.parse_blob(good)
    assert (e.dtype, e.shape, e.end - e.begin) == ("F32", (3, 4), 48)
    assert stf.parse_blob(bytes(good)) == e  # from the remembered parse
    for bad in (prefix + bytes(47), prefix + bytes(49)):
        with pytest.raises(BadInput):
            stf.parse_blob(bad)


@pytest.mark.parametrize("dtype", sorted(stf.DTYPE_SIZES))
def test_every_accepted_dtype_is_one_the_reference_reader_loads(dtype, tmp_path):
    from safetensors import safe_open
    n = 3
    path = tmp_path / "t.safetensors"
    path.write_bytes(_file({"a": {"dtype": dtype, "shape": [n], "data_offsets": [0, n * stf.DTYPE_SIZES[dtype]]}},
                           bytes(range(1, n * stf.DTYPE_SIZES[dtype] + 1))))
    assert _parse(path.read_bytes()).tensors[0].dtype == dtype
    with safe_open(str(path), framework="pt") as f:
        assert f.get_tensor("a").shape == (n,)


@pytest.mark.parametrize("dtype,nbytes", [("F4", 2), ("F6_E2M3", 3), ("F6_E3M2", 3)])
def test_sub_byte_dtypes_are_refused_by_name(dtype, nbytes):
    with pytest.raises(BadInput, match=f"dtype {dtype}, packed below a byte"):
        _parse(_file({"a": {"dtype": dtype, "shape": [4], "data_offsets": [0, nbytes]}}, b"\0" * nbytes))


def _tensor_file(header_text: str, data: bytes) -> bytes:
    h = header_text.encode()
    return struct.pack("<Q", len(h)) + h + data


@pytest.mark.parametrize("text", [
    ' {"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}',        # whitespace before the object
    '\n{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}',
    '{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"note":"x"}}',  # a key the reader ignores
])
def test_accepts_what_the_reference_reader_accepts(text, repo, tmp_path):
    """safetensors 0.8 reads these; mvc refused them ('not a JSON object', 'exactly dtype...')."""
    from safetensors.numpy import load_file
    blob = _tensor_file(text, struct.pack("<2f", 1.0, 2.0))
    path = tmp_path / "odd.safetensors"
    path.write_bytes(blob)
    assert list(load_file(str(path))["w"]) == [1.0, 2.0]
    assert [t.name for t in _parse(blob).tensors] == ["w"]
    cid = repo.commit({"m": str(path)}, message="odd")
    repo.checkout(cid, str(tmp_path / "out"))
    assert (tmp_path / "out" / "m" / "odd.safetensors").read_bytes() == blob  # byte for byte


@pytest.mark.parametrize("text,match", [
    ('{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"note":NaN}}', "NaN"),
    ('{"w":{"dtype":"F32","shape":[18446744073709551616,0],"data_offsets":[0,0]}}', "invalid shape"),
    ('{"w":{"dtype":"F32","shape":[' + ",".join(["1"] * 65) + '],"data_offsets":[0,4]}}', "65 dimensions"),
])
def test_refuses_what_the_reference_reader_or_torch_cannot_read(text, match):
    blob = _tensor_file(text, b"\0" * 8)
    with pytest.raises(BadInput, match=match):
        _parse(blob)


def test_header_limit_is_the_reference_readers():
    assert stf.MAX_HEADER_BYTES == 100_000_000  # safetensors refuses N > 1e8 ("header too large")
    blob = struct.pack("<Q", 100_000_001) + b"{"
    with pytest.raises(BadInput, match="absurd safetensors header size"):
        stf.parse_header(blob, 200_000_000, "x")


# -- what a fuzzer of headers found (each crashed with exit 4 or was accepted against the reference) --
@pytest.mark.parametrize("dtype", [["F32"], {"F32": 1}, None])
def test_a_dtype_that_is_not_a_string_is_refused(dtype):
    with pytest.raises(BadInput, match="unknown dtype"):
        _parse(_file({"a": {"dtype": dtype, "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8))


@pytest.mark.parametrize("shape", [[2 ** 63, 0], [2 ** 40, 2 ** 40, 0], [2 ** 64 - 1, 2 ** 64 - 1, 0]])
def test_a_shape_torch_cannot_hold_is_refused_even_with_no_element(shape):
    with pytest.raises(BadInput, match="shape torch cannot hold"):
        _parse(_file({"a": {"dtype": "F32", "shape": shape, "data_offsets": [0, 0]}}, b""))


def test_a_shape_with_no_element_that_torch_holds_is_accepted():
    blob = _file({"a": {"dtype": "F32", "shape": [2 ** 31, 2 ** 31, 0], "data_offsets": [0, 0]}}, b"")
    assert _parse(blob).tensors[0].shape == (2 ** 31, 2 ** 31, 0)


@pytest.mark.parametrize("raw", [b'{"a":{"dtype":"F32","shape":[-0],"data_offsets":[0,0]}}',
                                 b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[-0,8]}}'])
def test_minus_zero_is_refused_as_the_reference_reader_refuses_it(raw):
    with pytest.raises(BadInput, match="-0"):
        _parse(_file({}, b"\0" * 8, raw_header=raw))


def test_extra_keys_nest_no_deeper_than_the_reference_reader_accepts():
    def blob(k):
        return _file({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "x": json.loads("[" * k + "]" * k)}},
                     b"\0" * 4)
    _parse(blob(125))  # 127 levels in all: the deepest safe_open opens
    with pytest.raises(BadInput, match="nests deeper"):
        _parse(blob(126))
    with pytest.raises(BadInput):
        _parse(blob(900))


def test_a_tensor_named_like_the_metadata_key_is_refused_before_anything_is_stored(repo):
    with pytest.raises(BadInput, match="__metadata__"):
        repo.commit({"m": {"__metadata__": torch.ones(2), "w": torch.zeros(3)}}, message="x")
    assert not list(repo.store.ids()) and repo.head() is None


def test_a_git_lfs_pointer_is_named_as_one(tmp_path, repo):
    pointer = (b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"ab" * 32 + b"\nsize 12345\n")
    with pytest.raises(BadInput, match="Git LFS pointer") as e:
        _parse(pointer)
    assert "git lfs pull" in e.value.hint
    (tmp_path / "model.safetensors").write_bytes(pointer)
    with pytest.raises(BadInput, match="Git LFS pointer"):
        repo.commit({"m": str(tmp_path / "model.safetensors")}, message="x")


def _reference_accepts(blob: bytes) -> bool:
    try:
        load(blob)
    except Exception:  # (the reference reader's errors are of several types)
        return False
    return True


@pytest.mark.parametrize("extra,accepted", [
    (b'1e400', False), (b'-1e400', False), (b'1' + b'0' * 400, False),  # out of a float's range
    (b'1.8e308', False), (b'1e308', True), (b'18446744073709551616', True),  # (past 64 bits: a float)
    (b'-0', True), (b'[-0, 0.5]', True),  # -0 is refused only where an integer goes
    (b'{"z": 1, "z": 2}', True),  # a repeated key in an extra key's object: the last one, as there
])
def test_numbers_and_repeated_keys_outside_the_fields_are_judged_as_the_reference_reader_does(extra, accepted):
    """1e400 (or a 400-digit integer) in an extra key was accepted (Python reads it as infinity, the
    reference reader refuses it); -0 and a repeated key there were refused (the reference takes them)."""
    blob = _file({}, b"\0" * 4, raw_header=b'{"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":' + extra + b"}}")
    assert _reference_accepts(blob) is accepted
    if accepted:
        assert _parse(blob).tensors[0].name == "t"
    else:
        with pytest.raises(BadInput, match="out of range"):
            _parse(blob)


def test_repeated_keys_are_refused_in_names_and_fields_and_taken_in_metadata():
    """(A key repeated in the metadata is taken, but every value it had must be text: the reference
    reader checks each as it reads; an extra key repeated in an entry is taken too.)"""
    entry = b'{"dtype":"F32","shape":[1],"data_offsets":[0,4]}'
    metadata = _file({}, b"\0" * 4, raw_header=b'{"__metadata__":{"k":"a","k":"b"},"t":' + entry + b"}")
    assert _reference_accepts(metadata) and _parse(metadata).metadata == {"k": "b"}
    for earlier in (b"1", b"null"):
        odd = _file({}, b"\0" * 4, raw_header=b'{"__metadata__":{"k":' + earlier + b',"k":"b"},"t":' + entry + b"}")
        assert not _reference_accepts(odd)
        with pytest.raises(BadInput, match="__metadata__ must map strings to strings"):
            _parse(odd)
    extra = _file({}, b"\0" * 4, raw_header=entry[:-1].join([b'{"t":', b',"x":1,"x":2}}']))
    assert _reference_accepts(extra) and _parse(extra).tensors[0].name == "t"
    field = _file({}, b"\0" * 4, raw_header=b'{"t":{"dtype":"F32","dtype":"F32","shape":[1],"data_offsets":[0,4]}}')
    assert not _reference_accepts(field)
    with pytest.raises(BadInput, match="duplicate key 'dtype'"):
        _parse(field)
    name = _file({}, b"\0" * 8, raw_header=b'{"t":' + entry + b',"t":' + entry.replace(b"0,4", b"4,8") + b"}")
    with pytest.raises(BadInput, match="duplicate key 't'"):  # (the reference keeps one: a tensor lost)
        _parse(name)
