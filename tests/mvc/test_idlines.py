"""Files of object ids: parsing keeps the first order and each id once, skips damaged lines;
appending adds only the ids missing and keeps a line cut short by a crash apart."""
import os

from mvc.idlines import append_id_lines, parse_id_lines, parse_sized_lines, read_id_lines


def _ids(n, seed=0):
    import random
    rng = random.Random(seed)
    return [f"{rng.getrandbits(256):064x}" for _ in range(n)]


def test_parse_keeps_first_order_each_id_once_and_skips_damage():
    a, b, c = _ids(3)
    data = f"{b}\n{a}\n  {b}  \nnot an id\n{c[:40]}\n{a.upper()}\n{c}\n{a}".encode() + b"\n\xff\xfe\n"
    assert parse_id_lines(data) == [b, a, c]
    assert parse_id_lines(b"") == parse_id_lines(None) == []


def test_parse_of_many_repeated_ids():
    ids = _ids(5000, seed=1)
    data = "".join(f"{i}\n" for i in ids + ids[::-1] + ids[:10]).encode()
    assert parse_id_lines(data) == ids


def test_sized_lines_take_the_largest_size_of_an_id():
    a, b = _ids(2)
    assert parse_sized_lines(f"{a} 5\n{b} x\n{a} 9\n{a} 7\n{b}\n".encode()) == {a: 9}


def test_append_adds_the_missing_ids_after_a_line_cut_short(tmp_path):
    path = str(tmp_path / "sub" / "list")
    a, b, c = _ids(3, seed=2)
    assert append_id_lines(path, [a, b], "the list") == [a, b]
    with open(path, "ab") as f:
        f.write(c[:20].encode())  # a crash mid-line
    assert append_id_lines(path, [b, c, c], "the list") == [c]
    assert read_id_lines(path) == [a, b, c] and not os.path.exists(path + ".lock")
