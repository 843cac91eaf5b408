"""Training gives the same bits whatever the thread count: importing kernels pins MKL's strict
reproducible gemm before the first matrix product (run in fresh interpreters, where no BLAS call
happened before the import)."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TRAIN = """
import hashlib, torch
import cores
from cores.train import Trainer
data = bytes((i * 7 + (i // 13) * 3) % 26 + 97 for i in range(20000))
digests = []
for threads in (1, 2, 3):
    torch.set_num_threads(threads)
    core = cores.build("layercake", "tiny", seed=0)
    Trainer(core, data, steps=3, batch_size=8, seq_len=64, lr=0.004).run()
    h = hashlib.sha256()
    for v in core.state_dict().values():
        h.update(v.numpy().tobytes())
    digests.append(h.hexdigest())
print(" ".join(digests))
"""


def run_py(code, **env):
    full = {k: v for k, v in os.environ.items() if k not in ("MKL_CBWR", "MKL_DYNAMIC")} | env
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=full, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_import_pins_thread_invariant_gemm():
    out = run_py("import kernels, os\nfrom kernels.determinism import blas_thread_invariant\n"
                 "print(os.environ['MKL_CBWR'], os.environ['MKL_DYNAMIC'], blas_thread_invariant())")
    assert out == "AUTO,STRICT FALSE True"


def test_a_user_choice_of_mkl_cbwr_is_kept():
    assert run_py("import kernels, os; print(os.environ['MKL_CBWR'])", MKL_CBWR="COMPATIBLE") == "COMPATIBLE"


@pytest.mark.slow
def test_training_bits_do_not_depend_on_thread_count():
    digests = run_py(TRAIN).split()
    assert len(digests) == 3 and len(set(digests)) == 1, digests
