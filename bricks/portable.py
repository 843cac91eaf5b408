"""Portable domain decoder (exact mode, "PX"): a small recurrent byte model that owns the domain logits.

It reads only the raw bytes and the deterministic causal anchors (kernels/anchors.py), never the
host, so its logits cannot depend on the host's size, seed or predictions. Input at byte position
t: embedding(byte t) + W_a rmsnorm(anchor of the last completed patch (t+1)//4 - 1) + a position
code for j = (t+1) % 4; a GRU over those; logits = out(rmsnorm(h_t)) (logits[:, t] predicts byte t+1).

Exactness: in eval mode (and while ``kernels.batch_invariant`` is enabled) every sequence is
evaluated on its own with fixed shapes, so a sequence's logits are bit-identical alone or inside
any batch, and on every host it is attached to. Defaults (d_embed 64, hidden 144) give 148,720
parameters.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from bricks.common import json_config, seeded_normal
from cores import checks
from cores.abi import AbiSpec
from cores.base import keeps_global_rng
from cores.head import canonical_abi_spec
from cores.layercake import patches_to_bytes
from cores.layers import RMSNorm
from kernels import batch_invariant as bi
from kernels.anchors import ANCHOR_SPEC, causal_anchors

ARCH = "portable-brick"

DEFAULTS: dict = {"d_embed": 64, "hidden": 144, "seed": 0}


def default_config(seed: int = 0, **overrides) -> dict:
    """A complete portable-decoder config (it records the anchor spec and canonical ABI spec it reads)."""
    bad = set(overrides) - set(DEFAULTS)
    if bad:
        raise ValueError(f"unknown portable decoder options {sorted(bad)} (known: {', '.join(sorted(DEFAULTS))})")
    spec = canonical_abi_spec(ANCHOR_SPEC["d_abi"], ANCHOR_SPEC["patch_bytes"])
    return {**DEFAULTS, "seed": checks.seed(seed), **overrides, "d_abi": spec.d_abi, "patch_bytes": spec.patch_bytes,
            "anchor_spec": dict(ANCHOR_SPEC), "abi_spec": spec.to_dict(), "host_independent": True}


class PortableDecoder(nn.Module):
    """The portable exact domain decoder (see module docstring)."""

    mvc_kind = "brick"
    brick_kind = "portable"
    mvc_arch = ARCH

    def __init__(self, config: dict):
        super().__init__()
        cfg = json_config({**default_config(), **config})
        checks.seed(cfg["seed"], "portable decoder: seed")
        for name in ("d_embed", "hidden"):
            checks.integer(cfg[name], f"portable decoder: {name}", 1)
        self.mvc_config = cfg
        self.abi_spec = AbiSpec.from_dict(cfg["abi_spec"])
        self.anchor_spec = dict(cfg["anchor_spec"])
        A, pb = int(cfg["d_abi"]), int(cfg["patch_bytes"])
        if self.anchor_spec.get("d_abi") != A or self.anchor_spec.get("patch_bytes") != pb:
            raise ValueError("portable decoder: d_abi / patch_bytes must match the anchor spec")
        de, H = int(cfg["d_embed"]), int(cfg["hidden"])
        self.d_abi, self.patch_bytes = A, pb
        self.emb = nn.Embedding(256, de)
        self.anchor_norm = RMSNorm(A)
        self.anchor_in = nn.Linear(A, de, bias=False)
        self.pos_emb = nn.Parameter(torch.zeros(pb, de))
        self.rnn = nn.GRU(de, H, batch_first=True)
        self.norm = RMSNorm(H)
        self.out = nn.Linear(H, 256)
        g = torch.Generator().manual_seed(int(cfg["seed"]))
        with torch.no_grad():
            self.emb.weight.copy_(seeded_normal(self.emb.weight.shape, 0.3, g))
            self.anchor_in.weight.copy_(seeded_normal(self.anchor_in.weight.shape, 0.3 / math.sqrt(A), g))
            self.pos_emb.copy_(seeded_normal(self.pos_emb.shape, 0.1, g))
            bound = 1.0 / math.sqrt(H)
            for name, p in self.rnn.named_parameters():
                p.copy_((torch.rand(p.shape, generator=g) * 2 - 1) * bound)
            self.out.weight.copy_(seeded_normal(self.out.weight.shape, 0.02, g))
            self.out.bias.zero_()

    def _forward(self, byte_ids: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        T = byte_ids.shape[1]
        j = (torch.arange(T, device=byte_ids.device) + 1) % self.patch_bytes
        a = patches_to_bytes(self.anchor_in(self.anchor_norm(anchors)), T)  # zeros before patch 0 ends
        z = self.emb(byte_ids) + a + self.pos_emb[j]
        h, _ = self.rnn(z)
        return self.out(self.norm(h))

    def forward(self, byte_ids: torch.Tensor, anchors: torch.Tensor | None = None) -> torch.Tensor:
        """byte_ids (B, T) -> logits (B, T, 256); exact per-sequence evaluation in eval mode."""
        byte_ids = checks.byte_ids(byte_ids)
        if anchors is None:
            anchors = causal_anchors(byte_ids, self.anchor_spec)
        anchors = anchors.to(self.out.weight.device, self.out.weight.dtype)
        if bi.exact_eval(self):
            return bi.per_sequence(self._forward, byte_ids, anchors)
        return self._forward(byte_ids, anchors)


@keeps_global_rng
def build_from_config(config: dict) -> PortableDecoder:
    """Entry point ``mvc.archs: portable-brick``: rebuild from a recorded ``mvc_config``."""
    return PortableDecoder(dict(config))


build_from_config.made_by = "bricks.build('portable')"  # a brick, not a core: no presets (registry)
