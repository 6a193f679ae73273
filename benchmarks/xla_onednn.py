"""XLA's own oneDNN convolutions against the project's oneDNN kernel: train step, images/s.

    python -m benchmarks.xla_onednn [--rounds 3] [--reps 5] [--out FILE]

Newer jaxlib (0.11+, Python >= 3.12) can route convolutions through oneDNN calls of XLA's
own (XLA_FLAGS below, with `train.conv_impl: xla`); the project calls oneDNN itself, from
its kernel (`conv_impl: onednn`, cnn/onednn.py). Each variant runs in a process of its own
(XLA reads XLA_FLAGS once, at start-up), on one device, batch params.yaml's `batch_size`,
float32 (and bf16 where the CPU has native bf16): the train stage's step, without
augmentation, timed as benchmarks/run.py times it. The variants take turns over the rounds
and the ratio is taken within each round. The XLA variant reports how many
`__onednn$convolution` calls its compiled step holds: 0 means the flags did nothing here.
Prints JSON (and writes it to --out); docs/design/convolutions.md keeps the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
XLA_ONEDNN_FLAGS = (
    "--xla_cpu_experimental_onednn_custom_call=true "
    "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
)
VARIANTS = {"xla_onednn": ("xla", XLA_ONEDNN_FLAGS), "project_kernel": ("onednn", "")}


def child(conv_impl: str, precision: str, reps: int) -> dict:
    """One variant's figure, in this process (XLA_FLAGS already set by the parent)."""
    import jax
    import yaml

    from benchmarks.run import jax_train
    from confusion_embeddings import host
    from confusion_embeddings.cnn import conv
    from confusion_embeddings.cnn.config import RunConfig
    from confusion_embeddings.cnn.training import create_train_state, make_train_step
    from confusion_embeddings.config.train import SCHEMA
    from confusion_embeddings.core.params import validate_section

    p = validate_section(
        "train", yaml.safe_load((ROOT / "params.yaml").read_text())["train"], SCHEMA
    )
    choice = conv.resolve(conv_impl, precision)
    host.prepare_host(1, [p["batch_size"]], choice.impl)
    run = RunConfig.resolve(p, 0, 10, choice)
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (p["batch_size"], 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, p["batch_size"]).astype(np.int32)
    graphdef, state, tx = create_train_state(run, total_steps=1000)
    step = make_train_step(graphdef, tx, (np.full(3, 120.0), np.full(3, 60.0)), run.train)
    hlo = step.lower(state, batch, labels).compile().as_text()
    figure = jax_train(run, batch, labels, reps, augment=False, n_devices=1)
    return {
        "images_per_s": figure["median"],
        "min": figure["min"],
        "max": figure["max"],
        "conv_impl": choice.impl,
        "precision": choice.precision,
        "onednn_custom_calls": hlo.count("__onednn$convolution"),
        "jax": jax.__version__,
    }


def run_variant(name: str, precision: str, reps: int) -> dict:
    conv_impl, flags = VARIANTS[name]
    env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()}
    cmd = [sys.executable, "-m", "benchmarks.xla_onednn", "--child", conv_impl, precision]
    done = subprocess.run(
        [*cmd, "--reps", str(reps)], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if done.returncode:
        raise SystemExit(f"{name} ({precision}) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--child", nargs=2, metavar=("CONV_IMPL", "PRECISION"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.reps)))
        return
    from confusion_embeddings.host import cpu_isa, native_bf16

    precisions = ["f32", "bf16"] if native_bf16() else ["f32"]
    rounds: dict[str, list[dict]] = {}
    for r in range(args.rounds):
        for precision in precisions:
            for name in VARIANTS:
                fig = run_variant(name, precision, args.reps)
                rounds.setdefault(f"{name}_{precision}", []).append(fig)
                print(
                    f"round {r + 1}: {name} {precision}: {fig['images_per_s']:.0f} images/s",
                    file=sys.stderr,
                    flush=True,
                )
    result: dict = {
        "machine": {
            "python": platform.python_version(),
            "cpu_isa": cpu_isa(),
            "cpus": os.cpu_count(),
        },
        "figures": {k: v for k, v in rounds.items()},
    }
    for precision in precisions:
        ratios = [
            k["images_per_s"] / x["images_per_s"]
            for k, x in zip(
                rounds[f"project_kernel_{precision}"],
                rounds[f"xla_onednn_{precision}"],
                strict=True,
            )
        ]
        result[f"kernel_over_xla_onednn_{precision}"] = {
            "median": float(np.median(ratios)),
            "rounds": ratios,
        }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
