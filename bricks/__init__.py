"""bricks: layer 2 sparse ABI bricks, the portable exact domain decoder, int8 artifacts, attach/detach.

Public API (DESIGN.md section 9)::

    brick = bricks.build("sparse", host=core, seed=0)        # experts=8, top_k=2; or "portable"
    metrics = bricks.train(brick, host=core, data=domain, steps=..., seed=0, general=general)
    model = bricks.attach(core, brick)                        # byte_ids (B, T) -> (B, T, 256)
    core = bricks.detach(model)                               # the host, unchanged
    model = bricks.attach_from_commit(repo, commit_id, "python", core)
    q = bricks.quantize(brick); bricks.artifact_bytes(q)      # int8 artifact and its size
    brick = bricks.rebuild(tree, state)                       # from a committed brick tree + tensors
    bricks.fits(core, brick)                                  # None, or why it does not fit

Importing this package registers the brick archs with ``cores.registry`` (they are also the
``mvc.archs`` entry points ``sparse-brick``, ``portable-brick`` and their ``-int8`` variants).
"""
from bricks.api import BrickModel, attach, attach_from_commit, build, detach, fits, rebuild
from bricks.common import BUILDERS, artifact_bytes, builder, decode_delta, num_params
from bricks.int8 import Int8Brick, quantize
from bricks.portable import PortableDecoder
from bricks.sparse import SparseBrick
from bricks.trainer import BrickTrainer, max_logit_diff, measure, ppl_ratio, train
from cores import registry as _registry

for _arch in BUILDERS:
    _registry.register(_arch, builder(_arch))

__all__ = ["BrickModel", "BrickTrainer", "Int8Brick", "PortableDecoder", "SparseBrick", "artifact_bytes",
           "attach", "attach_from_commit", "build", "decode_delta", "detach", "fits", "max_logit_diff", "measure",
           "num_params", "ppl_ratio", "quantize", "rebuild", "train"]
