"""A plain GPT over a token vocabulary (RoPE, RMSNorm, tied embeddings): the baselines' body."""
from __future__ import annotations

import torch
from torch import nn

from cores.layers import Block, RMSNorm, init_weights


class TokenTransformer(nn.Module):
    """ids (B, T) -> logits (B, T, vocab); ``caches`` (one dict per layer) enables incremental decoding."""

    def __init__(self, vocab_size: int, d_model: int, n_layer: int, n_head: int, mlp_ratio: int = 4,
                 rope_base: float = 10000.0, seed: int = 0):
        super().__init__()
        self.wte = nn.Embedding(vocab_size, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_head, mlp_ratio, rope_base) for _ in range(n_layer))
        self.norm = RMSNorm(d_model)
        init_weights(self, seed, n_residual=n_layer)

    def forward(self, ids: torch.Tensor, caches: list | None = None) -> torch.Tensor:
        x = self.wte(ids)  # (B, T, C)
        for i, blk in enumerate(self.blocks):
            x = blk(x, None if caches is None else caches[i])
        return self.norm(x) @ self.wte.weight.T  # (B, T, vocab), tied output embedding

    @torch.inference_mode()
    def start(self, ids: torch.Tensor) -> tuple[list, torch.Tensor]:
        """Prefill with ids (1, T) -> (caches, logits (vocab,) for the next token)."""
        caches = [{} for _ in self.blocks]
        return caches, self(ids, caches)[0, -1]

    @torch.inference_mode()
    def step(self, caches: list, token: int) -> torch.Tensor:
        """Append one token -> logits (vocab,) for the following token."""
        ids = torch.tensor([[token]], device=self.wte.weight.device)
        return self(ids, caches)[0, -1]
