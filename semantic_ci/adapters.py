"""Example adapters for models that are not built by the cores registry.

An adapter is `function(state_dict, tree) -> callable(byte_ids (B, T)) -> logits (B, T, 256)`;
name it in mvc.toml as `adapter = "package.module:function"`.
"""
from __future__ import annotations

import torch

from mvc.errors import BadInput


class BigramModel(torch.nn.Module):
    """Next-byte logits read from a (256, 256) table: the smallest byte model there is."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = torch.nn.Parameter(table, requires_grad=False)

    def forward(self, byte_ids: torch.Tensor) -> torch.Tensor:
        return self.table[byte_ids]  # (B, T, 256)


def bigram(state: dict, tree: dict) -> BigramModel:
    """Adapter for a component holding one tensor `table` of shape (256, 256)."""
    table = state.get("table")
    if not isinstance(table, torch.Tensor) or tuple(table.shape) != (256, 256):
        found = (f"its tensor 'table' has shape {tuple(table.shape)}" if isinstance(table, torch.Tensor) else
                 f"it has no tensor 'table' (tensors: {', '.join(sorted(state)[:5]) or 'none'}"
                 f"{', ...' if len(state) > 5 else ''})")
        raise BadInput(f"the bigram adapter needs a component holding one (256, 256) tensor 'table': {found}",
                       "use this adapter only for bigram tables; cores built by cores.build need no adapter")
    return BigramModel(table.to(torch.float32))
