"""cores: layer 1 model definitions (LayerCake core, baselines), the ABI contract and the arch registry.

Public API (DESIGN.md section 9)::

    core = cores.build("layercake", config="tiny", seed=0, **overrides)  # or "byte-transformer", "bpe-transformer"
    logits = core(byte_ids)          # (B, T) -> (B, T, 256); logits[:, t] predicts byte t+1
    core.abi_spec.hash               # LayerCake cores
    metrics = cores.train(core, data, steps=..., seed=0)   # TrainingDiverged (ValueError) on NaN/inf

Bad arguments raise TypeError (wrong type) or ValueError (out of range) naming the argument.
"""
from cores import registry
from cores.abi import AbiMismatch, AbiSpec, check_compatible, first_mismatch
from cores.registry import build_named as build
from cores.train import Trainer, TrainingDiverged, split_holdout, train

__all__ = ["AbiMismatch", "AbiSpec", "Trainer", "TrainingDiverged", "build", "check_compatible", "first_mismatch",
           "registry", "split_holdout", "train"]
