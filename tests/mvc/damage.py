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
