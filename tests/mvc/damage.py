"""Damage for the mvc tests: flip one bit of a byte in a (read-only) object, pack or index file."""
import os


def flip_byte(path, pos: int = 3, mask: int = 1) -> None:
    """XOR the byte at `pos` of `path` with `mask`, in place."""
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ mask]))


def forge(repo, obj: dict) -> str:
    """Store a commit or tree as it is, skipping the checks write_object makes (what another
    program, a hand edit or a hostile remote can do); returns its id."""
    from mvc.objects import canonical_json, hash_bytes
    data = canonical_json(obj)
    return repo.store.put(data, oid=hash_bytes(data))
