"""examples/data.py: deterministic streams, held-out tails, the troff converter, clear errors."""
import pytest

from examples import data as D


def test_split_holdout_is_a_fixed_tail():
    data = bytes(range(100))
    train, hold = D.split_holdout(data, 0.1)
    assert train + hold == data and len(hold) == 10
    with pytest.raises(ValueError):
        D.split_holdout(data, 1.5)


def test_pydoc_fallback_always_present():
    prose = D.pydoc_prose()
    assert len(prose) > 200_000 and b"the" in prose
    assert D.general_stream(size=10_000, source="pydoc") == prose[:10_000]
    short = D.general_stream(size=10**8, source="pydoc", allow_short=True)
    assert short[:len(prose)] == prose


def test_short_source_fails_with_a_clear_message():
    with pytest.raises(D.DataUnavailable, match="only .* bytes available"):
        D.general_stream(size=10**9, source="pydoc")


def test_python_stream_deterministic_and_exact_size():
    a = D.python_stream(size=30_000)
    assert len(a) == 30_000 and a == D.python_stream(size=30_000)
    assert b"def " in a or b"import " in a


def test_disjoint_stream_shares_no_file_with_stdlib():
    if not D.disjoint_python_roots():
        pytest.skip("no site-packages on this machine")
    std = {rel for rel, _ in D._py_files(D.stdlib_dir())}
    files = D.python_disjoint_files()
    assert files and not any(name.split("/", 1)[1] in std for name, _ in files)
    stdlib_paths = {p.resolve() for _, p in D._py_files(D.stdlib_dir())}
    assert not any(p.resolve() in stdlib_paths for _, p in files)
    assert D.python_disjoint_stream(size=20_000, allow_short=True)


def test_man_to_text_strips_troff():
    src = "\n".join([
        '.\\" a comment', '.TH LS 1', '.de XX', 'macro body', '..', '.SH NAME',
        'ls \\- list directory contents', '.PP', 'Use \\fB\\-a\\fR to show \\fIall\\fP files.',
        '.BR stat (1)', '.TP', '\\fB\\-\\-all\\fR',
    ])
    text = D.man_to_text(src)
    assert "comment" not in text and "macro body" not in text and ".TH" not in text
    assert "NAME" in text and "ls - list directory contents" in text
    assert "Use -a to show all files." in text and "stat(1)" in text and "--all" in text


def test_general_sources_report():
    src = D.general_sources()
    assert src["pydoc"] and set(src) == {"python-doc", "man", "pydoc"}
    if src["python-doc"] is None:
        with pytest.raises(D.DataUnavailable, match="python3.11-doc"):
            D.general_stream(size=10, source="python-doc")
