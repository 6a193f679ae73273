"""Which oneDNN kernels the train step runs on this CPU, and how long each kind takes.

    python -m benchmarks.onednn_kernels          # the default network of params.yaml, f32

Runs three jitted train steps of params.yaml's network on one batch (as benchmarks/run.py
does) in a child process with ONEDNN_VERBOSE=1, then sums oneDNN's own log of the last step
by primitive, implementation and direction. The implementation names say whether oneDNN
found a kernel for this CPU's instruction set (`brgconv:avx2`, `jit:avx512_core`, ...) or
fell back to its reference code (`ref:any`, `gemm:ref`): the first question to ask when the
step is slow on some CPU. Writes nothing.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys

STEPS = 3

CHILD = f"""
import numpy as np, jax.numpy as jnp, yaml
from confusion_embeddings import host
from confusion_embeddings.cnn import conv
from confusion_embeddings.cnn.config import RunConfig
from confusion_embeddings.config.train import SCHEMA
from confusion_embeddings.cnn.training import create_train_state, make_train_step
from confusion_embeddings.core.params import validate_section

p = validate_section("train", yaml.safe_load(open("params.yaml"))["train"], SCHEMA)
choice = conv.resolve(p["conv_impl"], "f32")
host.prepare_host(p["cpu_devices"], [p["batch_size"]], choice.impl)
run = RunConfig.resolve(p, 0, 10, choice)
graphdef, state, tx = create_train_state(run, 1000)
step = make_train_step(graphdef, tx, (jnp.full(3, 120.0), jnp.full(3, 60.0)), run.train)
rng = np.random.default_rng(0)
x = rng.integers(0, 256, (p["batch_size"], 32, 32, 3), dtype=np.uint8)
y = rng.integers(0, 10, p["batch_size"]).astype(np.int32)
for i in range({STEPS}):
    print("STEP", i, flush=True)
    state, loss, _ = step(state, x, y)
    loss.block_until_ready()
"""


def main() -> None:
    env = {**os.environ, "ONEDNN_VERBOSE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True
    ).stdout
    last = out.split(f"STEP {STEPS - 1}\n", 1)[1]  # primitives are created in the first steps
    isa = next((line for line in out.splitlines() if ",isa:" in line), "isa: not reported")
    print(isa.split(",isa:")[-1].join(["oneDNN's instruction set: ", ""]))
    ms, calls = collections.Counter(), collections.Counter()
    for line in last.splitlines():
        f = line.split(",")
        if line.startswith("onednn_verbose") and "exec" in f[:4]:
            i = f.index("exec") + 2  # after "exec,cpu": primitive, implementation, direction
            key = f"{f[i]} {f[i + 1]} {f[i + 2]}"
            ms[key] += float(f[-1])
            calls[key] += 1
    print(f"{'primitive implementation direction':<70} calls      ms")
    for key, t in ms.most_common():
        print(f"{key:<70} {calls[key]:5d} {t:7.1f}")
    print(f"{'total':<70} {sum(calls.values()):5d} {sum(ms.values()):7.1f}")


if __name__ == "__main__":
    main()
