"""int8 brick artifacts: per-output-channel int8 weights + float32 scales (kernels/quant.py).

``quantize(brick)`` returns an ``Int8Brick`` whose state dict holds, for every floating tensor with
>= 2 dims and >= ``min_numel`` elements, ``<name>.q8`` (int8, the tensor's shape) and
``<name>.scale`` (float32, one per output channel, axis 0); smaller tensors (norm weights, biases,
position codes) stay float32 under their own names. ``dequantize_state_dict(q.state_dict())`` is
exactly the float state dict it computes with, so the module has the same call interface as the
brick it came from: each call dequantises and runs the float architecture functionally.

Its ``mvc_arch`` is the float arch + ``-int8``; ``mvc_config`` records the float arch and config,
so ``build_from_config`` rebuilds it without the original (for ``mvc load_model`` / ``rebuild``).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from bricks.common import builder, json_config
from cores import checks
from cores.base import keeps_global_rng
from kernels.quant import dequantize_state_dict, quantize_state_dict

MIN_NUMEL = 256


class _Holder(nn.Module):
    """An empty container module (one level of a dotted tensor name)."""


class Int8Brick(nn.Module):
    """A quantised brick (see module docstring)."""

    mvc_kind = "brick"

    def __init__(self, base: nn.Module, min_numel: int = MIN_NUMEL):
        super().__init__()
        if getattr(base, "mvc_kind", None) != "brick" or isinstance(base, Int8Brick):
            raise ValueError("quantize: expected a float brick (sparse or portable)")
        # (int() took True as 1 and 1.5 as 1, and recorded them; a negative bound quantised everything)
        min_numel = checks.integer(min_numel, "min_numel", 0)
        self.mvc_arch = base.mvc_arch + "-int8"
        self.brick_kind = base.brick_kind
        self.abi_spec = base.abi_spec
        self.mvc_config = json_config({"base_arch": base.mvc_arch, "base_config": base.mvc_config,
                                       "min_numel": min_numel})
        object.__setattr__(self, "_float", base)  # the float architecture; not a submodule
        base.eval()
        with torch.no_grad():
            sd = {k: v.detach().clone().float() if v.is_floating_point() else v.detach().clone()
                  for k, v in base.state_dict().items()}
        for name, t in quantize_state_dict(sd, min_numel).items():
            *path, leaf = name.split(".")
            mod: nn.Module = self
            for part in path:
                if not hasattr(mod, part):
                    mod.add_module(part, _Holder())
                mod = getattr(mod, part)
            mod.register_buffer(leaf, t)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            inner = self.__dict__.get("_float")
            if inner is not None and name in ("d_abi", "patch_bytes", "experts", "top_k", "rank",
                                              "anchor_spec", "read_abi", "read_anchors"):
                return getattr(inner, name)
            raise

    def float_state_dict(self) -> dict[str, torch.Tensor]:
        """The dequantised float32 state dict this artifact computes with."""
        return dequantize_state_dict(self.state_dict())

    def dequantize(self) -> nn.Module:
        """A new float brick holding the dequantised weights."""
        fresh = builder(self.mvc_config["base_arch"])(self.mvc_config["base_config"])
        fresh.load_state_dict(self.float_state_dict())
        return fresh.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        self._float.train(mode)
        return self

    def forward(self, *args, **kwargs):
        return functional_call(self._float, self.float_state_dict(), args, kwargs)


@keeps_global_rng
def quantize(brick: nn.Module, min_numel: int = MIN_NUMEL) -> Int8Brick:
    """int8 artifact of a float brick (the brick itself is not modified).

    ValueError for what is not a float brick (an int8 artifact already, a core, an attached model)
    and for a brick whose weights are not finite (kernels.quant refuses NaN / infinity).
    ``min_numel``: a non-negative int (TypeError / ValueError naming it otherwise)."""
    checks.integer(min_numel, "min_numel", 0)  # (before the template is built)
    if isinstance(brick, Int8Brick):
        raise ValueError(f"quantize: the brick is an int8 artifact already ({brick.mvc_arch}); quantize its float "
                         f"brick, or use it as it is")
    if getattr(brick, "mvc_kind", None) != "brick":
        hint = " (an attached model: quantize model.brick)" if hasattr(brick, "brick") else ""
        raise ValueError(f"quantize: expected a float brick built by bricks.build, got {type(brick).__name__}{hint}")
    template = builder(brick.mvc_arch)(brick.mvc_config)
    template.load_state_dict(brick.state_dict())
    q = Int8Brick(template, min_numel)
    return q.train(brick.training)


@keeps_global_rng
def build_from_config(config: dict) -> Int8Brick:
    """Entry point for ``sparse-brick-int8`` / ``portable-brick-int8``: an int8 brick of the recorded
    float arch with placeholder tensors (load the committed state dict into it)."""
    base = builder(config["base_arch"])(config["base_config"])
    # (read as older code recorded it: True as 1, 1.5 as 1, -1 as 0, which quantised alike)
    return Int8Brick(base, max(0, int(config.get("min_numel", MIN_NUMEL)))).eval()


build_from_config.made_by = "bricks.quantize(brick)"  # from a trained float brick: no presets (registry)
