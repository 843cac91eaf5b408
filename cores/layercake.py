"""LayerCake core: a byte-level patch model whose ABI states follow the canonical contract.

Data flow for byte ids x (B, T), patches of pb = 4 bytes (patch p = bytes 4p..4p+3, T padded to a
multiple of 4 internally; padding only ever reaches positions >= T):

  patch encoder   byte embeddings of a patch, concatenated -> linear       (B, P, C)
  patch model     causal transformer over patches (RoPE)                 h (B, P, C)
  ABI state       abi_p = W_abi h_p, the d_abi = 64 interface           abi (B, P, 64)
  local decoder   continuous causal byte model: for byte position t it reads the embeddings of bytes
                  t, t-1, .., t-3 (across patch boundaries), the position j = (t+1) mod 4 of the byte
                  it predicts, and the context of the last *completed* patch q = (t+1)//4 - 1
                  (temporal alignment: the state after patch q conditions every byte of patch q+1;
                  a learned BOS context before the first patch)                         (B, T, D)
  logits          out(decoder) + head_j(abi_q): the fixed canonical ABI-to-byte-logit head
                  (cores/head.py), so ABI coordinates mean the same bytes on every core  (B, T, 256)

logits[:, t] predicts byte t+1 from bytes 0..t (next-byte prediction); changing byte t never
changes logits at positions < t. Training adds the anchor loss: the mean squared error between
abi_p and the deterministic anchors of bytes 0..4p+3 (kernels/anchors.py), weight ``anchor_weight``.

``canonical=False`` builds the *legacy* core (negative control for bricks): no anchor loss and a
learned, seed-dependent head in place of the canonical one.

For bricks: ``forward_with_abi(byte_ids, abi_delta=None) -> (logits, abi, extras)`` where abi is
(B, P, 64), P = ceil(T/4), abi[:, p] sees bytes <= 4p+3; ``extras["abi_ctx"]`` (B, T, 64) is the ABI
state each byte position t is conditioned on (patch (t+1)//4 - 1, zeros before the first complete
patch), so position t only sees bytes <= t. ``abi_delta`` (B, P, 64) is added to the ABI states as the
head reads them (brick deltas decoded through the head); ``head_logits(abi_patches, T)`` decodes any
per-patch ABI-space tensor into aligned (B, T, 256) logits; ``anchors(byte_ids)`` gives the
deterministic anchors (B, P, 64) aligned like ``abi``.

Exact evaluation: in eval mode (while ``kernels.batch_invariant.enabled()``, the default) ``forward``
and ``forward_with_abi`` evaluate one sequence at a time, so a sequence's logits are bit-identical
alone or in any batch, on any thread count. Training mode runs batched. ``gen_start``/``gen_step``/
``generate`` decode incrementally (key/value cache over patches, no recomputation).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cores.base import ByteCore, bytes_to_tensor
from cores.head import AbiHead, canonical_abi_spec, legacy_abi_spec
from cores.layers import MLP, Block, RMSNorm, init_weights
from kernels import batch_invariant as bi
from kernels.anchors import causal_anchors

ARCH = "layercake"


@dataclass
class LayerCakeConfig:
    preset: str = "tiny"
    seed: int = 0
    d_model: int = 128          # patch model width
    n_layer: int = 2            # patch model depth
    n_head: int = 4
    mlp_ratio: int = 4
    d_embed: int = 32           # byte embedding width inside the patch encoder
    d_local: int = 128          # local decoder width
    n_local: int = 1            # local decoder residual MLP blocks
    local_mlp_ratio: int = 2
    local_taps: int = 4         # bytes t, t-1, .., t-taps+1 read by the decoder
    d_abi: int = 64
    patch_bytes: int = 4
    canonical: bool = True      # False: legacy core (no anchors, learned head)
    anchor_weight: float = 1.0
    decoder_reads_hidden: bool = True  # decoder context from h as well as from the ABI state
    block_bytes: int = 256      # training / evaluation context in bytes
    rope_base: float = 10000.0
    lr: float = 2e-3


# Parameter counts (tests/cores/test_configs.py): tiny 352K, small 2.00M, 5m 5.04M, 15m 15.05M.
# Learning rates: LayerCake trains best with a higher rate than the baselines (tiny, 300 steps on the
# general stream: 5e-3 -> 3.40 BPB vs 3e-3 -> 3.52; the BPE baseline got worse at 5e-3: 3.33 vs 3.16).
PRESETS: dict[str, dict] = {
    "tiny": dict(d_model=96, n_layer=2, n_head=4, d_embed=24, d_local=64, n_local=1, block_bytes=256, lr=5e-3),
    "small": dict(d_model=176, n_layer=4, n_head=4, d_embed=48, d_local=160, n_local=2, block_bytes=512, lr=3e-3),
    "5m": dict(d_model=288, n_layer=4, n_head=8, d_embed=64, d_local=256, n_local=2, block_bytes=1024, lr=2e-3),
    "15m": dict(d_model=432, n_layer=6, n_head=8, d_embed=96, d_local=320, n_local=2, block_bytes=1024, lr=1.5e-3),
}


def make_config(preset: str = "tiny", seed: int = 0, **overrides) -> LayerCakeConfig:
    """Preset + overrides -> config; unknown presets or fields raise ValueError."""
    if preset not in PRESETS:
        raise ValueError(f"unknown layercake config {preset!r} (choose from {', '.join(PRESETS)})")
    names = {f.name for f in dataclasses.fields(LayerCakeConfig)}
    bad = set(overrides) - names
    if bad:
        raise ValueError(f"unknown layercake config fields {sorted(bad)}")
    return LayerCakeConfig(**{**PRESETS[preset], "preset": preset, "seed": seed, **overrides})


def patches_to_bytes(xp: torch.Tensor, T: int, first: torch.Tensor | None = None, pb: int = 4) -> torch.Tensor:
    """Align per-patch rows to byte positions: (B, P, D) -> (B, T, D).

    Byte position t gets row q = (t+1)//pb - 1 (the last patch completed at or before t); the first
    pb-1 positions get ``first`` (broadcast (1 or B, 1, D)) or zeros.
    """
    B, P, D = xp.shape
    head = (first if first is not None else xp.new_zeros(1, 1, D)).expand(B, pb - 1, D)
    return torch.cat([head, xp.repeat_interleave(pb, dim=1)], dim=1)[:, :T]


class LocalBlock(nn.Module):
    """Residual MLP block of the local decoder: z + mlp(norm(z))."""

    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.norm = RMSNorm(d)
        self.mlp = MLP(d, hidden)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z + self.mlp(self.norm(z))


class LayerCakeCore(ByteCore):
    """The LayerCake core (see module docstring)."""

    mvc_arch = ARCH

    def __init__(self, cfg: LayerCakeConfig, overrides: dict | None = None):
        super().__init__()
        if cfg.patch_bytes != 4:
            raise ValueError("LayerCake cores use fixed four-byte patches (patch_bytes=4)")
        self.cfg = cfg
        self.mvc_config = {**dataclasses.asdict(cfg), "overrides": dict(overrides or {})}
        self.block_bytes, self.default_lr = cfg.block_bytes, cfg.lr
        pb, C, D, A = cfg.patch_bytes, cfg.d_model, cfg.d_local, cfg.d_abi
        # patch encoder + patch model
        self.byte_emb = nn.Embedding(256, cfg.d_embed)
        self.patch_in = nn.Linear(pb * cfg.d_embed, C, bias=False)
        self.blocks = nn.ModuleList(Block(C, cfg.n_head, cfg.mlp_ratio, cfg.rope_base) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(C)
        self.to_abi = nn.Linear(C, A, bias=False)
        # local decoder
        self.abi_to_ctx = nn.Linear(A, D, bias=False)
        self.hidden_to_ctx = nn.Linear(C, D, bias=False) if cfg.decoder_reads_hidden else None
        self.bos_ctx = nn.Parameter(torch.zeros(D))
        self.taps = nn.Embedding(cfg.local_taps * 257, D)  # tap i, byte b (b = 256: before the start)
        self.pos_emb = nn.Parameter(torch.zeros(pb, D))
        self.local_blocks = nn.ModuleList(LocalBlock(D, cfg.local_mlp_ratio * D) for _ in range(cfg.n_local))
        self.local_norm = RMSNorm(D)
        self.out = nn.Linear(D, 256, bias=False)
        self.head = AbiHead(A, pb, canonical=cfg.canonical)
        init_weights(self, cfg.seed, n_residual=cfg.n_layer + cfg.n_local)
        with torch.no_grad():
            g = torch.Generator().manual_seed(int(cfg.seed) + 1)
            self.pos_emb.copy_(torch.randn(self.pos_emb.shape, generator=g) * 0.02)
            if not cfg.canonical:  # legacy: a learned head with the canonical head's scale, seed-dependent
                self.head.weight.copy_(torch.randn(self.head.weight.shape, generator=g) * 0.144)
        self.abi_spec = canonical_abi_spec(A, pb) if cfg.canonical else legacy_abi_spec(A, pb)

    # ---- full-sequence computation ------------------------------------------------------------

    def _patch_states(self, x: torch.Tensor, caches: list | None = None):
        """Bytes of whole patches (B, P*pb) -> h (B, P, C), abi (B, P, A), ctx (B, P, D)."""
        B, n = x.shape
        P = n // self.cfg.patch_bytes
        h = self.patch_in(self.byte_emb(x).view(B, P, -1))  # (B, P, C)
        for i, blk in enumerate(self.blocks):
            h = blk(h, None if caches is None else caches[i])
        h = self.norm(h)
        abi = self.to_abi(h)  # (B, P, A)
        ctx = self.abi_to_ctx(abi)  # (B, P, D)
        if self.hidden_to_ctx is not None:
            ctx = ctx + self.hidden_to_ctx(h)
        return h, abi, ctx

    def _tap_ids(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T) -> (B, T, taps) embedding ids of bytes t, t-1, ... (256 before the start)."""
        T = x.shape[1]
        cols = [F.pad(x, (i, 0), value=256)[:, :T] + i * 257 for i in range(self.cfg.local_taps)]
        return torch.stack(cols, dim=-1)

    def _forward_impl(self, x: torch.Tensor, abi_delta: torch.Tensor | None = None):
        B, T = x.shape
        pb = self.cfg.patch_bytes
        P = -(-T // pb)
        h, abi, ctx = self._patch_states(F.pad(x, (0, P * pb - T)))  # (B, P, .)
        j = (torch.arange(T, device=x.device) + 1) % pb  # position of the predicted byte in its patch
        z = self.taps(self._tap_ids(x)).sum(dim=2)  # (B, T, D)
        z = z + patches_to_bytes(ctx, T, self.bos_ctx.view(1, 1, -1)) + self.pos_emb[j]
        for blk in self.local_blocks:
            z = blk(z)
        logits = self.out(self.local_norm(z))  # (B, T, 256)
        abi_h = abi if abi_delta is None else abi + abi_delta
        logits = logits + self.head_logits(abi_h, T)
        return logits, abi, h

    def head_logits(self, abi_patches: torch.Tensor, T: int) -> torch.Tensor:
        """Decode per-patch ABI-space vectors (B, P, 64) through the head -> aligned (B, T, 256).

        Position t gets head_j(abi_patches[:, (t+1)//4 - 1]) with j = (t+1) % 4; zeros for t < 3.
        """
        B, P, _ = abi_patches.shape
        pb = self.cfg.patch_bytes
        hl = self.head.patch_logits(abi_patches).reshape(B, P * pb, -1)  # (B, P*pb, 256): row 4p+j
        return torch.cat([hl.new_zeros(B, pb - 1, hl.shape[-1]), hl], dim=1)[:, :T]  # row t-3 at t

    def forward(self, byte_ids: torch.Tensor) -> torch.Tensor:
        """byte_ids (B, T) -> logits (B, T, 256); exact per-sequence evaluation in eval mode."""
        if bi.exact_eval(self):
            return bi.per_sequence(lambda xi: self._forward_impl(xi)[0], byte_ids)
        return self._forward_impl(byte_ids)[0]

    def forward_with_abi(self, byte_ids: torch.Tensor, abi_delta: torch.Tensor | None = None):
        """-> (logits (B, T, 256), abi (B, P, 64), extras); see module docstring."""
        T = byte_ids.shape[1]
        if bi.exact_eval(self):
            if abi_delta is None:
                logits, abi, h = bi.per_sequence(lambda xi: self._forward_impl(xi), byte_ids)
            else:
                logits, abi, h = bi.per_sequence(lambda xi, di: self._forward_impl(xi, di), byte_ids, abi_delta)
        else:
            logits, abi, h = self._forward_impl(byte_ids, abi_delta)
        pos = (torch.arange(T, device=byte_ids.device) + 1) % self.cfg.patch_bytes
        extras = {"hidden": h, "abi_ctx": patches_to_bytes(abi, T), "pos_in_patch": pos}
        return logits, abi, extras

    def anchors(self, byte_ids: torch.Tensor) -> torch.Tensor:
        """The deterministic anchors (B, P, 64) the ABI states are trained towards."""
        return causal_anchors(byte_ids).to(self.to_abi.weight.device)

    def training_loss(self, window: torch.Tensor) -> tuple[torch.Tensor, dict]:
        x, y = window[:, :-1], window[:, 1:]
        logits, abi, _ = self._forward_impl(x)
        ce = F.cross_entropy(logits.reshape(-1, 256), y.reshape(-1))
        stats = {"ce": float(ce.detach())}
        loss = ce
        if self.cfg.canonical and self.cfg.anchor_weight > 0:
            n = x.shape[1] // self.cfg.patch_bytes  # complete patches only
            anchor_loss = F.mse_loss(abi[:, :n], self.anchors(x[:, : n * self.cfg.patch_bytes]))
            loss = ce + self.cfg.anchor_weight * anchor_loss
            stats["anchor"] = float(anchor_loss.detach())
        return loss, stats

    # ---- incremental generation ---------------------------------------------------------------

    @torch.inference_mode()
    def gen_start(self, prompt: bytes) -> tuple[dict, torch.Tensor]:
        """Consume a non-empty prompt -> (state, logits (256,) for the next byte)."""
        if not prompt:
            raise ValueError("generate: the prompt must hold at least one byte")
        pb = self.cfg.patch_bytes
        x = bytes_to_tensor(prompt)[None].to(self.out.weight.device)
        n = (x.shape[1] // pb) * pb
        st = {"caches": [{} for _ in self.blocks], "t": x.shape[1], "buf": list(prompt[n:]),
              "hist": list(prompt[-self.cfg.local_taps:]), "head": None,
              "ctx_pos": self.bos_ctx[None, :] + self.pos_emb}  # (pb, D): context + position code
        if n:
            self._gen_patch(st, x[:, :n])
        return st, self._decode_step(st)

    def _gen_patch(self, st: dict, xb: torch.Tensor) -> None:
        """Run the patch model on completed patch bytes xb (1, k*pb); refresh the decoder context."""
        _, abi, ctx = self._patch_states(xb, st["caches"])
        st["ctx_pos"] = ctx[0, -1:] + self.pos_emb  # (pb, D)
        st["head"] = self.head.patch_logits(abi[:, -1:])[0, 0]  # (pb, 256)

    @torch.inference_mode()
    def gen_step(self, st: dict, byte: int) -> torch.Tensor:
        """Append one byte -> logits (256,) for the following byte."""
        st["hist"] = (st["hist"] + [byte])[-self.cfg.local_taps:]
        st["buf"].append(byte)
        st["t"] += 1
        if len(st["buf"]) == self.cfg.patch_bytes:
            self._gen_patch(st, torch.tensor([st["buf"]], device=self.out.weight.device))
            st["buf"] = []
        return self._decode_step(st)

    def _decode_step(self, st: dict) -> torch.Tensor:
        j = st["t"] % self.cfg.patch_bytes  # position of the next byte inside its patch
        hist = st["hist"]
        ids = torch.tensor([[i * 257 + (hist[-1 - i] if i < len(hist) else 256) for i in range(self.cfg.local_taps)]],
                           device=self.out.weight.device)
        z = F.embedding_bag(ids, self.taps.weight, mode="sum") + st["ctx_pos"][j]  # (1, D)
        for blk in self.local_blocks:
            z = blk(z)
        logits = self.out(self.local_norm(z))[0]  # (256,)
        return logits if st["head"] is None else logits + st["head"][j]

    @torch.inference_mode()
    def generate(self, prompt: bytes, n_bytes: int, stats: dict | None = None) -> bytes:
        """Greedy generation of ``n_bytes`` bytes after ``prompt`` (``stats["steps"]``: decoder steps)."""
        st, logits = self.gen_start(prompt)
        out = bytearray()
        for _ in range(n_bytes):
            b = int(logits.argmax())
            out.append(b)
            logits = self.gen_step(st, b)
        if stats is not None:
            stats["steps"] = n_bytes
        return bytes(out)


def build_from_config(config: dict) -> LayerCakeCore:
    """Entry point ``mvc.archs: layercake``: rebuild a core from its ``mvc_config`` (or any subset)."""
    config = dict(config)
    preset = config.pop("preset", "tiny")
    seed = int(config.pop("seed", 0))
    overrides = dict(config.pop("overrides", {}) or {})
    fields = {**overrides, **config}
    core = LayerCakeCore(make_config(preset, seed, **fields), overrides=overrides)
    return core


def build(config: str = "tiny", seed: int = 0, **overrides) -> LayerCakeCore:
    """Build a LayerCake core from a preset name, a seed and field overrides."""
    return LayerCakeCore(make_config(config, seed, **overrides), overrides=overrides)
