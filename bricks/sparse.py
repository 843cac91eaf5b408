"""Sparse ABI brick set: a router picks the top-k of N low-rank experts per patch; their ABI-space
delta is decoded through the host's fixed head and added to the host's byte logits.

Features at byte position t (which predicts byte t+1), all causal (bytes <= t only), each part
RMS-normalised and concatenated:
  - the brick's own embedding of bytes t, t-1, .., t-taps+1 plus a code for the position j = (t+1) % 4
    of the predicted byte in its patch, and a small GRU over those embeddings (``rnn`` units; 0: none);
  - the deterministic anchors of the last completed patch q = (t+1)//4 - 1 (kernels/anchors.py,
    ``read_anchors``): host-independent, so they carry what transfers between hosts;
  - the host's ABI state of patch q (``read_abi``: "router" (default) = the router reads it,
    true = router and experts, false = neither). Measured on the small tier: experts reading the
    ABI did not help the own host and cost cross-seed transfer, so by default only routing uses it.

Router (once per patch q, on the features at t = 4q+3, the last byte of patch q): logits over the
experts plus one *activity* logit; the top-k experts get softmax weights over their k logits, all
scaled by sigmoid(activity), so the router can stay quiet off-domain (trained with a KL term to the
host on general text). Those gates hold for the four positions conditioned on patch q
(t = 4q+3 .. 4q+6); before the first complete patch they are 0 and the brick adds nothing.

Experts: expert e maps u_t -> gelu(D_e u_t) (rank r) -> U_e (d_abi); the delta is
sum_e gate_e * U_e gelu(D_e u_t), one ABI-space vector per byte position, decoded by the host head of
that position (``bricks.common.decode_delta``). ``down`` stacks the D_e (E*r rows), ``up`` the U_e
(columns): plain linear maps with one row per output channel (int8 per-channel quantisation fits).
``up`` is zero-initialised by default: a fresh brick adds exactly nothing.

``forward(byte_ids, abi) -> delta (B, T, d_abi)``; decoding and adding is the attached model's job
(bricks/api.py). Defaults (experts 8, top-2, rank 48, d_embed 48, taps 4, rnn 128): 237,673 params.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bricks.common import json_config, seeded_normal, tap_ids
from cores import checks
from cores.abi import AbiSpec
from cores.base import keeps_global_rng
from cores.layercake import patches_to_bytes
from cores.layers import RMSNorm
from kernels.anchors import ANCHOR_SPEC, causal_anchors

ARCH = "sparse-brick"

DEFAULTS: dict = {
    "experts": 8,
    "top_k": 2,
    "rank": 48,
    "d_embed": 48,
    "taps": 4,
    "rnn": 128,
    "read_abi": "router",
    "read_anchors": True,
    "zero_init": True,
    "seed": 0,
}
REQUIRED = ("d_abi", "patch_bytes", "abi_spec")


def config_for_host(host, seed: int = 0, **overrides) -> dict:
    """A complete sparse-brick config for ``host`` (a LayerCake core): host dims, its ABI spec."""
    spec = getattr(host, "abi_spec", None)
    if spec is None or not hasattr(host, "forward_with_abi"):
        raise ValueError(f"a sparse brick needs a host with an ABI (forward_with_abi, abi_spec); "
                         f"{type(host).__name__} has none")
    canonical = spec.anchor_spec.get("name") == ANCHOR_SPEC["name"]
    hcfg = getattr(host, "mvc_config", None) or {}
    host_info = {"arch": getattr(host, "mvc_arch", type(host).__name__),
                 **{k: hcfg[k] for k in ("preset", "seed", "canonical", "d_model", "n_layer") if k in hcfg}}
    cfg = {**DEFAULTS, "read_anchors": canonical, "seed": checks.seed(seed), "d_abi": spec.d_abi,
           "patch_bytes": spec.patch_bytes, "abi_spec": spec.to_dict(), "host": host_info}
    bad = set(overrides) - set(DEFAULTS)
    if bad:
        raise ValueError(f"unknown sparse brick options {sorted(bad)} (known: {', '.join(sorted(DEFAULTS))})")
    cfg.update(overrides)
    return cfg


class SparseBrick(nn.Module):
    """The sparse ABI brick set (see module docstring)."""

    mvc_kind = "brick"
    brick_kind = "sparse"
    mvc_arch = ARCH

    def __init__(self, config: dict):
        super().__init__()
        missing = [k for k in REQUIRED if k not in config]
        if missing:
            raise ValueError(f"sparse brick config lacks {missing}")
        cfg = json_config({**DEFAULTS, **config})
        checks.seed(cfg["seed"], "sparse brick: seed")
        for name, least in (("experts", 1), ("top_k", 1), ("rank", 1), ("d_embed", 1), ("taps", 1), ("rnn", 0),
                            ("d_abi", 1), ("patch_bytes", 1)):
            checks.integer(cfg[name], f"sparse brick: {name}", least)
        for name in ("read_anchors", "zero_init"):
            checks.boolean(cfg[name], f"sparse brick: {name}")
        E, k, r = int(cfg["experts"]), int(cfg["top_k"]), int(cfg["rank"])
        if not 1 <= k <= E:
            raise ValueError(f"top_k must lie in 1..experts ({E}), got {k}")
        if cfg["read_anchors"] and cfg["abi_spec"]["anchor_spec"].get("name") != ANCHOR_SPEC["name"]:
            raise ValueError("read_anchors needs a host ABI spec with the canonical anchors")
        self.mvc_config = cfg
        self.abi_spec = AbiSpec.from_dict(cfg["abi_spec"])
        A, pb, de = int(cfg["d_abi"]), int(cfg["patch_bytes"]), int(cfg["d_embed"])
        self.d_abi, self.patch_bytes, self.experts, self.top_k, self.rank = A, pb, E, k, r
        self.n_taps = int(cfg["taps"])
        if cfg["read_abi"] not in (True, False, "router"):
            raise ValueError("read_abi must be true, false or 'router' (only the router reads the host's ABI)")
        self.abi_mode = {True: "all", False: "none", "router": "router"}[cfg["read_abi"]]
        self.read_abi, self.read_anchors = self.abi_mode != "none", bool(cfg["read_anchors"])
        self.taps = nn.Embedding(self.n_taps * 257, de)
        self.pos_emb = nn.Parameter(torch.zeros(pb, de))
        self.byte_norm = RMSNorm(de)
        self.d_rnn = int(cfg["rnn"])
        self.rnn = nn.GRU(de, self.d_rnn, batch_first=True) if self.d_rnn else None
        self.rnn_norm = RMSNorm(self.d_rnn) if self.d_rnn else None
        self.abi_norm = RMSNorm(A) if self.read_abi else None
        self.anchor_norm = RMSNorm(A) if self.read_anchors else None
        d_base = de + self.d_rnn + A * self.read_anchors
        self.d_router = d_base + A * self.read_abi
        self.d_expert = d_base + A * (self.abi_mode == "all")
        self.router = nn.Linear(self.d_router, E + 1)  # E expert logits + 1 activity logit
        self.down = nn.Linear(self.d_expert, E * r, bias=False)
        self.up = nn.Linear(E * r, A, bias=False)
        self._init(int(cfg["seed"]), bool(cfg["zero_init"]), self.d_expert)

    def _init(self, seed: int, zero_init: bool, d_in: int) -> None:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.taps.weight.copy_(seeded_normal(self.taps.weight.shape, 0.02, g))
            self.pos_emb.copy_(seeded_normal(self.pos_emb.shape, 0.02, g))
            if self.rnn is not None:
                bound = self.d_rnn ** -0.5
                for _, p in self.rnn.named_parameters():
                    p.copy_((torch.rand(p.shape, generator=g) * 2 - 1) * bound)
            self.router.weight.copy_(seeded_normal(self.router.weight.shape, 0.02, g))
            self.router.bias.zero_()
            self.down.weight.copy_(seeded_normal(self.down.weight.shape, d_in ** -0.5, g))
            up = seeded_normal(self.up.weight.shape, 0.02, g)
            self.up.weight.copy_(torch.zeros_like(up) if zero_init else up)

    @property
    def anchor_spec(self) -> dict:
        return self.abi_spec.anchor_spec

    # ---- computation ---------------------------------------------------------------------------
    def features(self, byte_ids: torch.Tensor, abi: torch.Tensor | None,
                 anchors: torch.Tensor | None = None) -> torch.Tensor:
        """u (B, T, d_router): normalised byte taps (+ position), byte GRU state, anchor context, host
        ABI context (the experts read the first ``d_expert`` columns)."""
        T = byte_ids.shape[1]
        j = (torch.arange(T, device=byte_ids.device) + 1) % self.patch_bytes
        e = self.taps(tap_ids(byte_ids, self.n_taps)).sum(dim=2) + self.pos_emb[j]
        parts = [self.byte_norm(e)]
        if self.rnn is not None:
            parts.append(self.rnn_norm(self.rnn(parts[0])[0]))
        if self.read_anchors:
            if anchors is None:
                anchors = causal_anchors(byte_ids, self.anchor_spec)
            parts.append(self.anchor_norm(patches_to_bytes(anchors.to(e.device, e.dtype), T)))
        if self.read_abi:  # last, so experts that do not read it take the leading d_expert columns
            if abi is None:
                raise ValueError("this sparse brick reads the host's ABI states: pass abi (B, P, d_abi)")
            parts.append(self.abi_norm(patches_to_bytes(abi.to(e.dtype), T)))
        return torch.cat(parts, dim=-1)

    def route(self, u: torch.Tensor) -> dict:
        """Per-patch routing from u at the last byte of each patch -> gates aligned to bytes.

        Returns ``gates`` (B, T, E) (top-k softmax weights times activity), ``probs`` (B, Q, E)
        (softmax over all experts), ``mask`` (B, Q, E) (1 for the chosen experts) and ``activity``
        (B, Q) for the Q = number of patches that condition some position.
        """
        B, T, _ = u.shape
        ur = u[:, self.patch_bytes - 1::self.patch_bytes]  # (B, Q, d_router): last byte of each patch
        logits = self.router(ur)
        expert_logits, act = logits[..., :-1], torch.sigmoid(logits[..., -1])
        top_v, top_i = expert_logits.topk(self.top_k, dim=-1)
        mask = torch.zeros_like(expert_logits).scatter(-1, top_i, 1.0)
        gates = torch.zeros_like(expert_logits).scatter(-1, top_i, torch.softmax(top_v, dim=-1))
        gates = gates * act[..., None]
        gates_b = torch.cat([gates.new_zeros(B, self.patch_bytes - 1, self.experts),
                             gates.repeat_interleave(self.patch_bytes, dim=1)], dim=1)[:, :T]
        return {"gates": gates_b, "probs": torch.softmax(expert_logits, dim=-1), "mask": mask, "activity": act}

    def compute(self, byte_ids: torch.Tensor, abi: torch.Tensor | None = None,
                anchors: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """-> (delta (B, T, d_abi), routing info of ``route``)."""
        u = self.features(byte_ids, abi, anchors)
        info = self.route(u)
        B, T, _ = u.shape
        h = F.gelu(self.down(u[..., :self.d_expert]), approximate="tanh").view(B, T, self.experts, self.rank)
        h = h * info["gates"][..., None]
        return self.up(h.reshape(B, T, self.experts * self.rank)), info

    def forward(self, byte_ids: torch.Tensor, abi: torch.Tensor | None = None,
                anchors: torch.Tensor | None = None) -> torch.Tensor:
        """byte_ids (B, T), host ABI states (B, P, d_abi) -> ABI-space delta per byte (B, T, d_abi)."""
        return self.compute(byte_ids, abi, anchors)[0]


@keeps_global_rng
def build_from_config(config: dict) -> SparseBrick:
    """Entry point ``mvc.archs: sparse-brick``: rebuild from a recorded ``mvc_config``."""
    return SparseBrick(dict(config))


build_from_config.made_by = "bricks.build('sparse', host=core)"  # no presets: it is sized to a host (registry)
