"""Building bricks, attaching them to a live host, detaching, fit checks, and rebuilding from commits.

``attach(host, brick)`` returns a ``BrickModel``: callable ``byte_ids (B, T) -> (B, T, 256)``.
- sparse brick: host logits + decode(host head, brick delta), from one host pass
  (``forward_with_abi``); with ``model.enabled = False`` it returns the host's own logits, untouched;
- portable decoder: the decoder's logits (the host is never called; it owns the domain logits).
In eval mode the whole model evaluates one sequence at a time (kernels/batch_invariant.py), so its
logits are exact and batch-invariant, like the cores'. Attaching never modifies the host:
``detach(model)`` gives it back as it was.
"""
from __future__ import annotations

import torch
from torch import nn

from bricks.common import builder, decode_delta
from cores import checks
from cores.abi import first_mismatch, mismatch_values
from cores.base import ByteCore, keeps_global_rng
from kernels import batch_invariant as bi

KINDS = {"sparse": "sparse-brick", "portable": "portable-brick"}


@keeps_global_rng
def build(kind: str, host=None, seed: int = 0, **overrides) -> nn.Module:
    """A new brick: ``kind`` "sparse" (needs ``host``: experts=8, top_k=2, rank=48 by default) or
    "portable" (host-independent; ``host`` is ignored)."""
    arch = KINDS.get(kind, kind)
    if arch == "sparse-brick":
        if host is None:
            raise ValueError("bricks.build('sparse', host=...): a sparse brick is built for a host's ABI")
        from bricks.sparse import SparseBrick, config_for_host
        return SparseBrick(config_for_host(host, seed=seed, **overrides))
    if arch == "portable-brick":
        from bricks.portable import PortableDecoder, default_config
        return PortableDecoder(default_config(seed=seed, **overrides))
    raise ValueError(f"unknown brick kind {kind!r} (choose from {', '.join(KINDS)})")


def fits(host_model, brick) -> str | None:
    """Why ``brick`` cannot be attached to ``host_model`` (kind, ABI field or shape), or None if it fits."""
    if isinstance(brick, BrickModel):
        return ("the brick is a host with a brick attached (a BrickModel); pass the brick itself, "
                "e.g. model.brick")
    if getattr(brick, "mvc_kind", None) != "brick":
        return f"not a brick: {type(brick).__name__} has mvc_kind {getattr(brick, 'mvc_kind', None)!r}"
    if isinstance(host_model, BrickModel):
        return ("the host already has a brick attached (a BrickModel); attach to the core itself "
                "(bricks.detach(model)); stacking bricks is not supported")
    kind = getattr(brick, "brick_kind", None)
    if kind == "portable":
        return None if callable(host_model) else f"host {type(host_model).__name__} is not callable"
    if kind != "sparse":
        return f"unknown brick kind {kind!r}"
    spec = getattr(host_model, "abi_spec", None)
    if spec is None or not hasattr(host_model, "forward_with_abi") or not hasattr(host_model, "head"):
        return (f"host {getattr(host_model, 'mvc_arch', None) or type(host_model).__name__!r} has no ABI interface "
                f"(forward_with_abi, abi_spec, head): sparse bricks need a LayerCake core")
    bs = brick.abi_spec
    if spec.d_abi != brick.d_abi:
        return f"d_abi mismatch: host {spec.d_abi}, brick {brick.d_abi}"
    if spec.patch_bytes != brick.patch_bytes:
        return f"patch_bytes mismatch: host {spec.patch_bytes}, brick {brick.patch_bytes}"
    field = first_mismatch(bs, spec)
    if field is not None:
        a, b = mismatch_values(bs, spec, field)
        return f"ABI mismatch in {field}: brick {a!r}, host {b!r}"
    shape = tuple(host_model.head.weight.shape)
    if shape != (brick.patch_bytes, brick.d_abi, 256):
        return f"head shape mismatch: host head {shape}, brick needs {(brick.patch_bytes, brick.d_abi, 256)}"
    return None


class BrickModel(ByteCore):
    """A host with a brick attached (see module docstring); ``.host``, ``.brick``, ``.enabled``."""

    # read by mvc (tensors.module_state): committed whole it would be plain tensors no one can rebuild
    mvc_commit_refusal = ("cannot commit an attached model (host + brick, from bricks.attach) as one component: "
                          "it would record no arch or config, so it could not be rebuilt or migrated")

    @property
    def mvc_commit_hint(self) -> str:
        """How to commit the parts instead (shown with ``mvc_commit_refusal``)."""
        if self.host is None:
            return 'commit the brick: repo.commit({"brick/<name>": model.brick}, message=...)'
        return ('commit the parts: repo.commit({"core": model.host, "brick/<name>": model.brick}, message=...), '
                'then bricks.attach_from_commit(repo, commit_id, "<name>", host) rebuilds the model')

    def __init__(self, host: nn.Module | None, brick: nn.Module):
        super().__init__()
        if host is None and brick.brick_kind != "portable":
            raise ValueError("only a portable decoder runs without a host")
        self.host, self.brick = host, brick
        self.enabled = True
        self.block_bytes = getattr(host, "block_bytes", 256)

    def bpb(self, data: bytes, window_bytes: int | None = None, batch_size: int = 8) -> float:
        """Exact bits per byte (``ByteCore.bpb``); every submodule's mode is restored afterwards."""
        modes = [(m, m.training) for m in self.modules()]
        try:
            return super().bpb(data, window_bytes, batch_size)
        finally:
            for m, mode in modes:
                m.training = mode

    @property
    def brick_kind(self) -> str:
        return self.brick.brick_kind

    def training_loss(self, window: torch.Tensor):
        """Refused: training the attached model would train the host too (``cores.train(model)``
        changed the host's weights, breaking the frozen-host contract every brick relies on)."""
        raise TypeError("a host with a brick attached cannot be trained as a core (the host would change); "
                        "train the brick with bricks.train(brick, host=core, ...) (the host stays frozen), "
                        "or the core alone with cores.train(bricks.detach(model), ...)")

    def _forward(self, byte_ids: torch.Tensor) -> torch.Tensor:
        if self.brick.brick_kind == "portable":
            return self.brick(byte_ids)
        logits, abi, _ = self.host.forward_with_abi(byte_ids)
        if not self.enabled:
            return logits
        delta = self.brick(byte_ids, abi)
        return logits + decoded(self.host.head.weight.detach(), delta, logits.dtype)

    def forward(self, byte_ids: torch.Tensor) -> torch.Tensor:
        """byte_ids (B, T) -> logits (B, T, 256); exact per-sequence evaluation in eval mode."""
        byte_ids = checks.byte_ids(byte_ids)
        if self.brick.brick_kind == "sparse" and not self.enabled:
            return self.host(byte_ids)
        if bi.exact_eval(self):
            return bi.per_sequence(self._forward, byte_ids)
        return self._forward(byte_ids)


def decoded(head_weight: torch.Tensor, delta: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``decode_delta`` in the brick's precision, as ``dtype`` (the host logits'): a float32 brick on
    a bfloat16 host decodes in float32. A no-op cast when both are float32 (bits unchanged)."""
    return decode_delta(head_weight.to(delta.dtype), delta).to(dtype)


def attach(host: nn.Module, brick: nn.Module) -> BrickModel:
    """Attach ``brick`` to ``host`` -> a callable model; ValueError saying why when it does not fit."""
    why = fits(host, brick)
    if why is not None:
        raise ValueError(f"brick does not fit the host: {why}")
    model = BrickModel(host, brick)
    model.training = bool(host.training or brick.training)  # no recursion: the host's mode is left alone
    return model


def detach(model: BrickModel) -> nn.Module:
    """The host of an attached model, unchanged."""
    if not isinstance(model, BrickModel):
        raise TypeError(f"detach: expected a model returned by bricks.attach, got {type(model).__name__}")
    return model.host


def rebuild(tree: dict, state: dict) -> nn.Module:
    """A brick from a committed tree (its recorded ``arch`` and ``config``) and its loaded tensors.

    When the tree records an ABI hash, the rebuilt brick's spec must hash the same.
    """
    arch, config = tree.get("arch"), tree.get("config")
    if not arch or config is None:
        raise ValueError("rebuild: the tree records no arch/config (it was not committed from a brick module)")
    if tree.get("kind") not in (None, "brick"):
        raise ValueError(f"rebuild: component kind is {tree.get('kind')!r}, not 'brick'")
    brick = builder(arch)(config)
    # (mvc.tensors.match_stored_dtypes, which bricks may not import, for modules without
    # non-persistent buffers: a brick has none)
    for name, t in [*brick.named_parameters(), *brick.named_buffers()]:  # the dtypes it was committed in:
        stored = state.get(name)                                            # load_state_dict would upcast a
        if stored is not None and stored.is_floating_point() and t.is_floating_point():  # bfloat16 brick
            t.data = t.data.to(stored.dtype)
    try:
        brick.load_state_dict(dict(state))
    except RuntimeError as e:  # missing / unexpected tensors or other shapes: the tree and its tensors disagree
        detail = " ".join(line.strip() for line in str(e).splitlines()[1:4])
        raise ValueError(f"rebuild: the tensors do not fit the recorded {arch} config: {detail[:400]}") from None
    recorded = (tree.get("abi") or {}).get("hash")
    if recorded and recorded != brick.abi_spec.hash:
        raise ValueError(f"rebuild: recorded ABI hash {recorded[:12]} != rebuilt brick's {brick.abi_spec.hash[:12]}")
    return brick.eval()


def attach_from_commit(repo, commit_id: str, name: str, host_model: nn.Module) -> BrickModel:
    """Rebuild ``brick/<name>`` of commit ``commit_id`` in ``repo`` and attach it to ``host_model``.

    Uses only ``repo.tree(rev, component)`` and ``repo.load(rev, component)``.
    """
    component = name if name.startswith("brick/") else f"brick/{name}"
    tree = repo.tree(commit_id, component)
    brick = rebuild(tree, repo.load(commit_id, component))
    return attach(host_model, brick)
