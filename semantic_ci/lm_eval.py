"""lm-evaluation-harness adapter: any mvc byte model as an lm-eval ``LM`` named "mvc".

    python -m semantic_ci.lm_eval --model mvc --model_args repo=.,rev=HEAD,component=core \\
        --tasks TASK [--include_path DIR] ...

``python -m semantic_ci.lm_eval`` registers the model, then runs the harness's own command line, so it
works whether or not the installed lm-eval discovers plugins. lm-eval is optional (``pip install
mvc[eval]``): importing ``semantic_ci`` never imports it, and this module imports without it (the
class then refuses to be built, naming the install command).

Everything is bytes: contexts and continuations are UTF-8 encoded and scored byte by byte, one
sequence at a time in eval mode (the batch-invariant path of semantic_ci/evaluate.py), with at most
``window`` bytes of context (model_args ``window``; default the model's ``block_bytes``, else 256).

- ``loglikelihood(context, continuation)``: summed natural-log probabilities of the continuation's
  bytes, each conditioned on the bytes before it (at most ``window`` of them), and whether every
  byte is the model's argmax. With an empty context the first byte has no conditioning and is
  scored under the uniform distribution (log 1/256).
- ``loglikelihood_rolling(text)``: the windows of ``semantic_ci.evaluate`` (chunks of window + 1
  bytes, stride ``window``): every byte after the first is scored exactly once, which is the figure
  mvc's own BPB is computed from. lm-eval's ``bits_per_byte`` divides by *all* bytes of a document
  (its first byte included), so it equals mvc's BPB times (n - 1) / n for a document of n bytes.
- ``generate_until(context, gen_kwargs)``: greedy bytes until a stop string (``until``) appears or
  ``max_gen_toks`` bytes (counted in bytes); decoded as UTF-8 with replacement characters. Models
  with an incremental cache (``gen_start`` / ``gen_step``, e.g. LayerCake) start from the last
  ``window`` bytes of the context and keep their cache; others re-read the last ``window`` bytes.

model_args: ``repo`` (default "."), ``rev`` ("HEAD"), ``component`` ("core"), ``adapter``
("module:function" for models the cores registry cannot build, as in mvc.toml), ``bricks`` (names
joined by "+", attached to the core), ``window`` (bytes).
"""
from __future__ import annotations

import math
import sys

import torch

from semantic_ci import evaluate

try:  # optional dependency: the class below is only usable with lm-eval installed
    import lm_eval.models  # noqa: F401  (the harness's own model names, registered before ours)
    from lm_eval.api.model import LM as _LMBase
    from lm_eval.api.registry import register_model as _register_model
    HAVE_LM_EVAL = True
except ImportError:  # pragma: no cover - exercised where lm-eval is absent
    _LMBase, _register_model, HAVE_LM_EVAL = object, None, False

MODEL_NAME = "mvc"
DEFAULT_WINDOW = 256
DEFAULT_MAX_GEN = 256
LOG_UNIFORM = -math.log(256.0)


def load_model(repo: str = ".", rev: str = "HEAD", component: str = "core", adapter: str | None = None,
               bricks: str | None = None):
    """Build the byte model committed as ``component`` at ``rev`` (optionally with bricks attached,
    names separated by ``+``) in eval mode."""
    import mvc
    from semantic_ci.models import ModelCache
    r = mvc.Repo(repo)
    commit = r.resolve(rev)
    names = tuple(b for b in (bricks or "").split("+") if b)
    return ModelCache(r).get(commit, component, names, adapter or None)


def _to_bytes(text: str) -> bytes:
    return text.encode("utf-8")


class MvcLM(_LMBase):
    """An mvc byte model behind lm-eval's ``LM`` interface (module docstring)."""

    HARNESS_KEYS = {"batch_size", "max_batch_size", "device"}  # passed by the harness; one sequence at a time here

    def __init__(self, repo: str = ".", rev: str = "HEAD", component: str = "core", adapter: str | None = None,
                 bricks: str | None = None, window: int | str | None = None, model=None, **extra):
        if not HAVE_LM_EVAL:
            raise ImportError("lm-eval is not installed (pip install 'mvc[eval]' or pip install lm-eval)")
        unknown = sorted(set(extra) - self.HARNESS_KEYS)
        if unknown:
            raise TypeError(f"unknown mvc model_args {unknown} (known: repo, rev, component, adapter, bricks, window)")
        super().__init__()
        self.model = model if model is not None else load_model(repo, rev, component, adapter, bricks)
        if hasattr(self.model, "eval"):
            self.model.eval()
        self.window = int(window or getattr(self.model, "block_bytes", None) or DEFAULT_WINDOW)
        if self.window < 1:
            raise ValueError("window must be >= 1 byte")

    # ---- scoring ---------------------------------------------------------------------------------

    def _logprobs(self, chunk: bytes) -> torch.Tensor:
        """float64 log-probabilities (len(chunk) - 1, 256) of the model over chunk[:-1]."""
        return torch.log_softmax(evaluate.window_logits(self.model, chunk).to(torch.float64), dim=-1)

    def score(self, data: bytes, start: int) -> tuple[float, bool]:
        """Summed log-probability of data[start:] given what precedes it (at most ``window`` bytes of
        context per byte), and whether every scored byte is the argmax. Byte 0, if scored, gets the
        uniform log(1/256) and counts as greedy only if it is byte 0."""
        total, greedy = 0.0, True
        if start == 0 and data:
            total, greedy, start = LOG_UNIFORM, data[0] == 0, 1
        t = start
        while t < len(data):
            end = min(len(data), t + self.window)           # targets data[t:end]
            lo = max(0, end - 1 - self.window)             # inputs data[lo:end-1] (<= window bytes)
            logp = self._logprobs(data[lo:end])            # row i predicts data[lo + i + 1]
            rows = torch.arange(t - 1 - lo, end - 1 - lo)
            target = torch.tensor(list(data[t:end]), dtype=torch.long)
            total += float(logp[rows, target].sum())
            greedy = greedy and bool((logp[rows].argmax(dim=-1) == target).all())
            t = end
        return total, greedy

    def rolling_nll(self, data: bytes) -> float:
        """Summed NLL (nats) of every byte after the first, in ``semantic_ci.evaluate`` windows."""
        nll, _count = evaluate.model_nll(self.model, data, self.window)
        return float(nll.sum())

    # ---- the LM interface ------------------------------------------------------------------------

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        out = []
        for req in requests:
            context, continuation = req.args[0], req.args[1]
            ctx, cont = _to_bytes(context), _to_bytes(continuation)
            out.append(self.score(ctx + cont, len(ctx)))
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        return [-self.rolling_nll(_to_bytes(req.args[0])) for req in requests]

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out = []
        for req in requests:
            context, kwargs = req.args[0], dict(req.args[1] or {})
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_bytes = int(kwargs.get("max_gen_toks", DEFAULT_MAX_GEN))
            out.append(self.generate(_to_bytes(context), [_to_bytes(u) for u in until if u], max_bytes)
                       .decode("utf-8", errors="replace"))
        return out

    @torch.inference_mode()
    def generate(self, prompt: bytes, stops: list[bytes], max_bytes: int) -> bytes:
        """Greedy continuation of ``prompt`` cut before the first stop string (bytes)."""
        if not prompt:
            raise ValueError("generate_until: the context is empty; a byte model needs at least one byte")
        gen = bytearray()
        incremental = hasattr(self.model, "gen_start") and hasattr(self.model, "gen_step")
        if incremental:
            state, logits = self.model.gen_start(prompt[-self.window:])
        for _ in range(max_bytes):
            if not incremental:
                seq = (prompt + bytes(gen))[-self.window:]
                logits = evaluate.window_logits(self.model, seq + b"\0")[-1]
            b = int(logits.argmax())
            gen.append(b)
            hit = [i for i in (bytes(gen).find(s) for s in stops) if i >= 0]
            if hit:
                return bytes(gen[:min(hit)])
            if incremental:
                logits = self.model.gen_step(state, b)
        return bytes(gen)


# registered on import of this module under its canonical name (when run with -m, main() imports
# the canonical module, so the copy executing as __main__ never registers a second class)
if HAVE_LM_EVAL and __name__ != "__main__":
    MvcLM = _register_model(MODEL_NAME)(MvcLM)


def register() -> type:
    """The class lm-eval knows as "mvc" (registered by importing this module)."""
    if not HAVE_LM_EVAL:
        raise ImportError("lm-eval is not installed (pip install 'mvc[eval]' or pip install lm-eval)")
    import importlib
    return importlib.import_module("semantic_ci.lm_eval").MvcLM


def main(argv: list[str] | None = None) -> None:
    """``python -m semantic_ci.lm_eval ARGS``: register "mvc", then run lm-eval's command line on ARGS."""
    try:
        register()
    except ImportError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(3) from None
    from lm_eval.__main__ import cli_evaluate
    sys.argv = ["lm_eval", *(sys.argv[1:] if argv is None else argv)]
    cli_evaluate()


if __name__ == "__main__":
    main()
