"""Matched-parameter baselines: a byte-level transformer and a BPE transformer.

Both are plain GPTs (cores/gpt.py) sized to the same parameter tiers as LayerCake. The BPE model
trains its tokenizer on the training stream (``prepare``) and keeps it in the uint8 buffer
``tokenizer_blob`` (part of the state dict, so a committed model rebuilds with its tokenizer).
Its ``forward`` takes *token* ids and returns (B, T, vocab) logits; it has no per-byte logits, and is
compared through ``bpb(data)``: each window of ``block_bytes`` bytes is tokenised on its own, tokens
1..n-1 are scored, and BPB = NLL bits / bytes those tokens cover (the byte cores score bytes 1..L-1
of the same windows).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cores import checks
from cores.base import LN2, ByteCore, CoreBase, bytes_to_tensor, keeps_global_rng
from cores.bpe import BpeCodec, train_bpe
from cores.gpt import TokenTransformer
from kernels import batch_invariant as bi


@dataclass
class TransformerConfig:
    preset: str = "tiny"
    seed: int = 0
    vocab_size: int = 256
    d_model: int = 96
    n_layer: int = 3
    n_head: int = 4
    mlp_ratio: int = 4
    block_bytes: int = 256      # training / evaluation context in bytes
    rope_base: float = 10000.0
    lr: float = 2e-3


BYTE_PRESETS: dict[str, dict] = {
    "tiny": dict(d_model=96, n_layer=3, n_head=4, block_bytes=256, lr=3e-3),
    "small": dict(d_model=200, n_layer=4, n_head=4, block_bytes=512, lr=2e-3),
    "5m": dict(d_model=320, n_layer=4, n_head=8, block_bytes=1024, lr=1.5e-3),
    "15m": dict(d_model=448, n_layer=6, n_head=8, block_bytes=1024, lr=1e-3),
}

# BPE small: swept like LayerCake small (cores/layercake.py): 2e-3 2.796, 3e-3 2.691, 4e-3 2.741,
# 5e-3 2.825 held-out BPB (bench_cores' protocol with --archs bpe-transformer --set bpe-transformer.lr=...).
# The byte transformer's rates are not swept (it is not a target baseline).
BPE_PRESETS: dict[str, dict] = {
    "tiny": dict(vocab_size=1024, d_model=104, n_layer=2, n_head=4, block_bytes=256, lr=3e-3),
    "small": dict(vocab_size=2048, d_model=184, n_layer=4, n_head=4, block_bytes=512, lr=3e-3),
    "5m": dict(vocab_size=4096, d_model=288, n_layer=4, n_head=8, block_bytes=1024, lr=1.5e-3),
    "15m": dict(vocab_size=8192, d_model=400, n_layer=6, n_head=8, block_bytes=1024, lr=1e-3),
}


def make_config(presets: dict, preset: str, seed: int, **overrides) -> TransformerConfig:
    """Preset + overrides -> config; unknown presets or fields, and values of the wrong type or out
    of range, raise ValueError / TypeError naming the field."""
    if not isinstance(preset, str) or preset not in presets:
        raise ValueError(f"unknown config {preset!r} (choose from {', '.join(presets)})")
    bad = set(overrides) - {f.name for f in dataclasses.fields(TransformerConfig)}
    if bad:
        raise ValueError(f"unknown transformer config fields {sorted(bad)}")
    return check_config(TransformerConfig(**{**presets[preset], "preset": preset, "seed": seed, **overrides}))


def check_config(cfg: TransformerConfig) -> TransformerConfig:
    """Types and ranges of every field (see cores/checks.py); the vocabulary is checked by each arch."""
    what = "transformer config"
    plain = {"seed": checks.seed(cfg.seed, f"{what}: seed")}  # (numpy numbers become int / float: JSON values)
    for name, least in (("vocab_size", 1), ("d_model", 1), ("n_layer", 0), ("n_head", 1), ("mlp_ratio", 1),
                        ("block_bytes", 2)):
        plain[name] = checks.integer(getattr(cfg, name), f"{what}: {name}", least)
    plain["lr"] = checks.real(cfg.lr, f"{what}: lr", above=0.0, maximum=checks.MAX_LR)
    plain["rope_base"] = checks.real(cfg.rope_base, f"{what}: rope_base", above=0.0)
    checks.head_width(cfg.d_model, cfg.n_head, what)
    return dataclasses.replace(cfg, **plain)


class _Shared:
    def _setup(self, arch: str, cfg: TransformerConfig, overrides: dict | None) -> None:
        self.cfg = cfg
        self.mvc_arch = arch
        self.mvc_config = {**dataclasses.asdict(cfg),  # (overrides as the checked config holds them: plain values)
                           "overrides": {k: getattr(cfg, k, v) for k, v in (overrides or {}).items()}}
        self.block_bytes, self.default_lr = cfg.block_bytes, cfg.lr
        self.gpt = TokenTransformer(cfg.vocab_size, cfg.d_model, cfg.n_layer, cfg.n_head, cfg.mlp_ratio,
                                    cfg.rope_base, cfg.seed)

    def _logits(self, ids: torch.Tensor) -> torch.Tensor:
        if bi.exact_eval(self):
            return bi.per_sequence(self.gpt, ids)
        return self.gpt(ids)


class ByteTransformer(_Shared, ByteCore):
    """GPT over bytes: forward(byte_ids (B, T)) -> (B, T, 256), logits[:, t] predicts byte t+1."""

    def __init__(self, cfg: TransformerConfig, overrides: dict | None = None):
        super().__init__()
        if cfg.vocab_size != 256:
            raise ValueError(f"byte-transformer: vocab_size must be 256, got {cfg.vocab_size}")
        self._setup("byte-transformer", cfg, overrides)

    def forward(self, byte_ids: torch.Tensor) -> torch.Tensor:
        return self._logits(checks.byte_ids(byte_ids))

    @torch.inference_mode()
    def generate(self, prompt: bytes, n_bytes: int, stats: dict | None = None) -> bytes:
        """Greedy generation of ``n_bytes`` bytes after a non-empty prompt (key/value cache)."""
        prompt, n_bytes = checks.as_bytes(prompt, "prompt"), checks.integer(n_bytes, "n_bytes", 0)
        if not prompt:
            raise ValueError("generate: the prompt must hold at least one byte")
        caches, logits = self.gpt.start(bytes_to_tensor(prompt)[None].to(self.gpt.wte.weight.device))
        out = bytearray()
        for _ in range(n_bytes):
            b = int(logits.argmax())
            out.append(b)
            logits = self.gpt.step(caches, b)
        if stats is not None:
            stats["steps"] = n_bytes
        return bytes(out)


class BPETransformer(_Shared, CoreBase):
    """GPT over BPE tokens; see module docstring."""

    def __init__(self, cfg: TransformerConfig, overrides: dict | None = None):
        super().__init__()
        if cfg.vocab_size < 256:
            raise ValueError(f"bpe-transformer: vocab_size must be >= 256 (every byte is a token), got {cfg.vocab_size}")
        self._setup("bpe-transformer", cfg, overrides)
        self.register_buffer("tokenizer_blob", torch.zeros(0, dtype=torch.uint8))
        self._codec: BpeCodec | None = None

    # -- tokenizer ---------------------------------------------------------------------------------
    @property
    def codec(self) -> BpeCodec:
        if self.tokenizer_blob.numel() == 0:
            raise RuntimeError("bpe-transformer: tokenizer not trained yet (call prepare(train_bytes) "
                               "or cores.train, which does it)")
        if self._codec is None:
            self._codec = BpeCodec(bytes(self.tokenizer_blob.tolist()).decode("utf-8"))
        return self._codec

    def prepare(self, data: bytes) -> None:
        """Train the tokenizer on the training bytes (once; a loaded tokenizer is kept)."""
        if self.tokenizer_blob.numel():
            return
        js = train_bpe(data, self.cfg.vocab_size).encode("utf-8")
        self.tokenizer_blob = torch.frombuffer(bytearray(js), dtype=torch.uint8).clone()
        self._codec = None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "tokenizer_blob"
        if key in state_dict:  # the blob's size is data-dependent: adopt the stored one
            self.tokenizer_blob = state_dict[key].detach().clone().to(torch.uint8)
            self._codec = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def stream_units(self, data: bytes) -> torch.Tensor:
        return torch.tensor(self.codec.encode(data), dtype=torch.long)

    def bytes_of_units(self, units: torch.Tensor) -> int:
        return len(self.codec.decode(units.flatten().tolist()))

    # -- model ---------------------------------------------------------------------------------------
    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        """token_ids (B, T) -> (B, T, vocab) logits (exact per-sequence evaluation in eval mode)."""
        return self._logits(checks.byte_ids(token_ids, "token_ids", self.cfg.vocab_size))

    def training_loss(self, window: torch.Tensor) -> tuple[torch.Tensor, dict]:
        x, y = window[:, :-1], window[:, 1:]
        logits = self(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        return loss, {"ce": float(loss.detach())}

    def bpb(self, data: bytes, window_bytes: int | None = None, batch_size: int = 8) -> float:
        """Bits per byte on ``data``; same byte windows as the byte cores (see module docstring)."""
        L = self.block_bytes if window_bytes is None else checks.integer(window_bytes, "window_bytes", 2)
        data = checks.as_bytes(data)
        lengths = torch.tensor([len(b) for b in self.codec.id_to_bytes], dtype=torch.long)
        was_training = self.training
        self.eval()
        bits, scored = [], 0
        try:
            with torch.inference_mode():
                for s in range(0, len(data), L):
                    ids = torch.tensor(self.codec.encode(data[s:s + L]), dtype=torch.long)
                    if ids.numel() < 2:
                        continue
                    logits = self(ids[None, :-1])[0]  # (n-1, vocab)
                    nll = F.cross_entropy(logits.float(), ids[1:], reduction="sum")
                    bits.append(float(nll) / LN2)
                    scored += int(lengths[ids[1:]].sum())
        finally:
            self.train(was_training)
        if not scored:
            raise ValueError("bpb: need at least 2 tokens")
        return math.fsum(bits) / scored

    @torch.inference_mode()
    def generate(self, prompt: bytes, n_bytes: int, stats: dict | None = None) -> bytes:
        """Greedy token generation until ``n_bytes`` bytes are produced (tokenisation included;
        ``stats["steps"]``: tokens generated)."""
        prompt, n_bytes = checks.as_bytes(prompt, "prompt"), checks.integer(n_bytes, "n_bytes", 0)
        if not prompt:
            raise ValueError("generate: the prompt must hold at least one byte")
        ids = torch.tensor([self.codec.encode(prompt)], device=self.gpt.wte.weight.device)
        caches, logits = self.gpt.start(ids)
        out = bytearray()
        steps = 0
        while len(out) < n_bytes:
            tok = int(logits.argmax())
            out += self.codec.id_to_bytes[tok]
            logits = self.gpt.step(caches, tok)
            steps += 1
        if stats is not None:
            stats["steps"] = steps
        return bytes(out[:n_bytes])


@keeps_global_rng
def build_byte_transformer(config: dict) -> ByteTransformer:
    """Entry point ``mvc.archs: byte-transformer``: rebuild from an ``mvc_config`` dict."""
    preset, seed, fields, overrides = _split(config)
    return ByteTransformer(make_config(BYTE_PRESETS, preset, seed, **fields), overrides)


@keeps_global_rng
def build_bpe_transformer(config: dict) -> BPETransformer:
    """Entry point ``mvc.archs: bpe-transformer``: rebuild from an ``mvc_config`` dict."""
    preset, seed, fields, overrides = _split(config)
    return BPETransformer(make_config(BPE_PRESETS, preset, seed, **fields), overrides)


def _split(config: dict) -> tuple[str, int, dict, dict]:
    config = dict(config)
    preset = config.pop("preset", "tiny")
    seed = checks.seed(config.pop("seed", 0))
    overrides = dict(config.pop("overrides", {}) or {})
    fields = {**overrides, **config}
    for key, how in (("preset", "config="), ("seed", "seed=")):
        if key in fields:
            raise ValueError(f"{key!r} is not a field override; pass it as cores.build(..., {how}...)")
    return preset, seed, fields, overrides
