"""cores: layer 1 model definitions (LayerCake core, baselines), the ABI contract and the arch registry."""
