"""Pack indexes are searched, not loaded: opening a pack reads its headers, a lookup binary-searches
the sorted records and decodes only the one it finds, whose fields are checked when it is read;
fsck, gc and pack hash and check every index whole."""
import os
import random

import pytest
import torch

import mvc
from mvc import pack as pack_module, pack_format as pf
from mvc.errors import CorruptObject, ObjectMissing, UnknownRevision
from mvc.objects import hash_bytes
from mvc.pack import pack_store_of
from mvc.pack_write import pack

from damage import flip_byte
from test_pack import drift_history, same


def the_pack(repo):
    (p,) = pack_store_of(mvc.Repo(repo.root).store).packs()
    return p


def record_at(p, oid: str) -> int:
    """Where `oid`'s record starts in the index file."""
    return pf.IDX_HEADER.size + sorted(p.records).index(oid) * pf.RECORD.size


def rewrite_index(p, edit) -> None:
    """Edit the index body and write it back with a matching checksum (what a buggy or hostile
    writer leaves: damage the trailer cannot show)."""
    with open(p.idx_path, "rb") as f:
        body = bytearray(f.read()[:-pf.TRAILER_BYTES])
    edit(body)
    os.chmod(p.idx_path, 0o644)
    with open(p.idx_path, "wb") as f:
        f.write(bytes(body) + bytes.fromhex(hash_bytes(bytes(body))))


def test_opening_a_pack_decodes_only_the_records_looked_up_and_hashes_no_index(repo, monkeypatch):
    cid = repo.commit({"m": {f"t{i}": torch.full((2,), float(i)) for i in range(300)}}, message="many")
    pack(repo)
    p = the_pack(repo)
    assert len(p.records) > 300
    decoded, hashed = [0], []

    class Counted(pf.Record):
        def __init__(self, *args, **kwargs):
            decoded[0] += 1
            super().__init__(*args, **kwargs)

    real_hash = pack_module.hash_bytes
    monkeypatch.setattr(pf, "Record", Counted)
    monkeypatch.setattr(pack_module, "hash_bytes", lambda data: hashed.append(len(data)) or real_hash(data))
    r = mvc.Repo(repo.root)
    assert [c["id"] for c in r.log(n=1)] == [cid]
    assert decoded[0] <= 2  # the commit's record (a ref resolved to it), not the pack's 300
    assert not any(n >= os.path.getsize(p.idx_path) - pf.TRAILER_BYTES for n in hashed)
    decoded[0] = 0
    assert r.resolve(cid[:10]) == cid  # a short id: a binary search, then the object it names is read
    assert decoded[0] <= 2


def test_a_damaged_index_record_fails_its_own_read_clearly_and_the_rest_read(repo):
    ids, states = drift_history(repo, 3)
    pack(repo)
    p = the_pack(repo)
    w_id = mvc.Repo(repo.root).tree(ids[-1], "core")["tensors"]["w"]["id"]  # no delta rests on it
    flip_byte(p.idx_path, record_at(p, w_id) + 64 + 7, 0x40)  # its offset's high byte: far outside
    fresh = mvc.Repo(repo.root)
    for cid, s in zip(ids[:-1], states[:-1]):  # before, the whole index was refused: every read failed
        assert same(fresh.load(cid, "core"), s)
    with pytest.raises(CorruptObject, match=f"{w_id}.*lies outside the pack"):
        fresh.load(ids[-1], "core")
    fsck = mvc.Repo(repo.root).fsck()
    assert not fsck["ok"]
    assert any(x["id"] == f"{p.name}.idx" and "checksum" in x["problem"] for x in fsck["problems"])
    gc = mvc.Repo(repo.root)
    with pytest.raises(CorruptObject, match=f"1 pack index is damaged, e.g. {p.name}.idx; gc stopped"):
        gc.gc(grace_s=0)  # gc hashes every index first: what the damaged one lists is missing to it
    assert os.path.exists(p.idx_path) and os.path.exists(p.path)


def test_an_index_record_of_unknown_encoding_is_refused_on_read_and_by_fsck(repo):
    ids, states = drift_history(repo, 2)
    pack(repo)
    p = the_pack(repo)
    tid = mvc.Repo(repo.root).read_commit(ids[-1])["components"]["core"]
    at = record_at(p, tid)

    def bad_encoding(body):
        body[at + 88] = 9  # checksum matches: only the record's own check sees it
    rewrite_index(p, bad_encoding)
    fresh = mvc.Repo(repo.root)
    assert same(fresh.load(ids[0], "core"), states[0])
    with pytest.raises(CorruptObject, match=f"{tid}.*unknown encoding 9"):
        fresh.read_tree(tid)
    problems = mvc.Repo(repo.root).fsck()["problems"]
    assert any(x["id"] == f"{p.name}.idx" and "unknown encoding" in x["problem"] for x in problems)


def test_a_record_naming_another_objects_entry_is_caught_by_the_content_hash(repo):
    ids, _ = drift_history(repo, 2)
    pack(repo)
    p = the_pack(repo)
    a, b = ids  # two commits: a's record is made to point at b's entry
    at_a, at_b = record_at(p, a), record_at(p, b)

    def swap(body):
        body[at_a + 32: at_a + pf.RECORD.size] = body[at_b + 32: at_b + pf.RECORD.size]
    rewrite_index(p, swap)
    with pytest.raises(CorruptObject, match=f"{a}.*decodes to content hashing to {b[:12]}"):
        mvc.Repo(repo.root).read_commit(a)


def test_fsck_names_an_index_whose_records_are_out_of_order(repo):
    ids, _ = drift_history(repo, 2)
    pack(repo)
    p = the_pack(repo)
    first, second = pf.IDX_HEADER.size, pf.IDX_HEADER.size + pf.RECORD.size

    def swap(body):
        body[first:second], body[second:second + pf.RECORD.size] = \
            body[second:second + pf.RECORD.size], body[first:second]
    rewrite_index(p, swap)  # a binary search may miss its objects: only a whole check sees why
    problems = mvc.Repo(repo.root).fsck()["problems"]
    assert any(x["id"] == f"{p.name}.idx" and "not sorted" in x["problem"] for x in problems)


def test_an_object_a_flipped_index_id_hides_is_damage_naming_the_index_not_missing(repo):
    ids, states = drift_history(repo, 3)
    pack(repo)
    p = the_pack(repo)
    with pytest.raises(ObjectMissing, match="is missing"):  # while the index is sound
        mvc.Repo(repo.root).read_commit(hash_bytes(b"in no pack"))
    flip_byte(p.idx_path, record_at(p, ids[-1]) + 20, 0x01)  # the head commit's id, in its record
    fresh = mvc.Repo(repo.root)
    assert same(fresh.load(ids[0], "core"), states[0])  # the records it finds still serve
    with pytest.raises(CorruptObject, match=f"{ids[-1]} is in no usable pack, and pack {p.name} cannot be used "
                                            r"\(its index is damaged\)"):
        fresh.log()  # (it said "object ... is missing")
    with pytest.raises(UnknownRevision, match=f"no such object.*pack {p.name} cannot be used .* and may hold it"):
        fresh.resolve(ids[-1])
    assert not fresh.store.has(ids[-1]) and fresh.store.has(ids[0])


def test_a_truncated_pack_is_named_not_its_sound_index(repo):
    """A .pack cut short was said to have a damaged .idx (probe h10)."""
    ids, _states = drift_history(repo, 2)
    pack(repo)
    p = the_pack(repo)
    os.chmod(p.path, 0o644)
    os.truncate(p.path, os.path.getsize(p.path) - 1)
    with pytest.raises(CorruptObject, match=f"pack {p.name} cannot be used .pack {p.name}.pack does not match "
                                            "its index.: the object may be in that pack") as e:
        mvc.Repo(repo.root).log()
    assert ".idx is damaged" not in e.value.message


def test_id_prefix_lookups_match_a_scan_of_every_id(repo):
    """The binary search (fast path) against the plain filter over every id (its reference twin)."""
    drift_history(repo, 2)
    pack(repo)
    drift_history(repo, 2, seed=1, start=None)
    pack(mvc.Repo(repo.root))  # a second pack: lookups search both
    ps = pack_store_of(mvc.Repo(repo.root).store)
    assert len(ps.packs()) == 2
    every = sorted(ps.records())
    rng = random.Random(0)
    prefixes = ["", "A", "xyz", "0" * 65] + [o[:k] for o in every for k in (1, 2, 3, 7, 64)] + \
        ["".join(rng.choice("0123456789abcdef") for _ in range(rng.randint(1, 4))) for _ in range(200)]
    fresh = pack_store_of(mvc.Repo(repo.root).store)  # no index decoded whole
    for prefix in prefixes:
        assert fresh.ids_with_prefix(prefix) == [o for o in every if o.startswith(prefix)], prefix


def test_a_flipped_size_field_is_damage_not_a_blob_and_gc_deletes_nothing(repo):
    """A record's size, trusted unread, said whether an object is read to learn its kind: a flipped
    bit made a commit 'a blob' (log, show and checkout refused it), and gc, walking a certificate's
    commit as a blob, deleted a tensor only that commit reached."""
    first = repo.commit({"m": {"w": torch.zeros(4)}}, message="one")
    second = repo.commit({"m": {"w": torch.ones(4)}}, message="two")
    pack(repo)
    p = the_pack(repo)
    at = record_at(p, second) + 80  # the record's size field (id, base, offset, length, size, ...)
    with open(p.idx_path, "r+b") as f:
        f.seek(at + 5)
        byte = f.read(1)
        f.seek(at + 5)
        f.write(bytes([byte[0] ^ 1]))  # + 1 TiB: far more than a commit's 4 MiB
    r = mvc.Repo(repo.root)
    for read in (lambda: r.resolve(second), lambda: r.resolve(second[:8]), r.log):  # (not "names a blob")
        with pytest.raises(CorruptObject, match=f"object {second}(: | in pack-.*: )entry header does not match"):
            read()
    assert r.resolve(first) == first
    before = sorted(os.listdir(os.path.dirname(p.idx_path)))
    with pytest.raises(CorruptObject, match=r"reachable objects are missing .*, and 1 pack index is damaged"):
        r.gc(grace_s=0)
    assert sorted(os.listdir(os.path.dirname(p.idx_path))) == before
    with pytest.warns(UserWarning, match="pack index is damaged"):
        mvc.Repo(repo.root).du()


def test_a_put_writes_a_loose_copy_rather_than_count_on_a_damaged_packed_record(repo):
    """With indexes no longer checked whole on open, a put of bytes a pack holds trusted the
    record: a flipped offset made the new commit that counted on it unreadable."""
    w = torch.arange(1000, dtype=torch.float32)
    repo.commit({"core": {"w": w}}, message="one")
    pack(repo)
    p = the_pack(repo)
    w_id = mvc.Repo(repo.root).tree("HEAD", "core")["tensors"]["w"]["id"]
    flip_byte(p.idx_path, record_at(p, w_id) + 64 + 7, 0x40)  # its offset's high byte: far outside
    cid = mvc.Repo(repo.root).commit({"core": {"w": w.clone(), "b": torch.ones(3)}}, message="two")
    assert torch.equal(mvc.Repo(repo.root).load(cid, "core")["w"], w)


def test_a_damaged_record_on_a_directory_remote_is_said_to_be_there(repo):
    from mvc.transport import DirectoryTransport
    cid = repo.commit({"core": {"w": torch.arange(1000, dtype=torch.float32)}}, message="one")
    pack(repo)
    p = the_pack(repo)
    flip_byte(p.idx_path, record_at(p, cid) + 64 + 7, 0x40)
    with pytest.raises(CorruptObject, match="lies outside the pack, on remote REMOTE-URL"):
        DirectoryTransport(repo.root, url="REMOTE-URL").get(cid, max_size=1 << 20)
