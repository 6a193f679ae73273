"""Side-by-side speed of the pipeline against PyTorch CPU and against the machine's limit.

    make bench            # or: python -m benchmarks.run [--quick] [--skip-repro]

Measures, in one process on one machine (these machines are noisy: ratios measured side
by side hold better than absolute figures), each figure the median of several repetitions
after a warm-up, with the spread (min-max) printed. JAX and PyTorch take turns over three
rounds (two with --quick): a figure is the median of its round medians (each round's
median is kept under "rounds"), a ratio the median of the ratios measured within a round.
Like the stages, the process first resolves the convolution (cnn/conv.py) and calls
host.prepare_host (glibc keeps freed memory for reuse, which applies to PyTorch as much
as to JAX); the network is built and initialised by the train stage's own functions.
Every timed figure also carries the process's minor page faults and kernel CPU seconds per
repetition.

- peak_gflops: float32 2048x2048 matrix multiply in JAX (the practical peak of this machine).
- train_images_per_s: the default network of params.yaml (`train:`), one jitted train step
  (forward, backward, SGD+Nesterov update) without augmentation, JAX on the devices the
  pipeline uses (`train.cpu_devices`; the figure on a single device is reported beside it)
  vs the same network in
  PyTorch (benchmarks/torch_reference.py) in its faster memory layout (channels_last or
  contiguous, whichever measures faster here); train_ratio_vs_torch = JAX / PyTorch. Both
  steps update every parameter by SGD, so that they do the same work; the default
  optimizer's step where it is not SGD (`train.optimizer: muon`: Newton-Schulz iterations
  on the filters' updates on top) is train_images_per_s_jax_default_optimizer, and
  train_ratio_default_optimizer_vs_sgd its speed against the SGD step. The JAX step with its
  fused augmentation is reported too, and so is the step the train stage runs
  (train_images_per_s_jax_pipeline_step: params.yaml's optimizer, augmentation and
  precision, bf16 where it runs), with train_ratio_pipeline_step_vs_sgd its speed against
  the SGD step of the same precision: what the optimizer and augmentation cost on this CPU.
- train_fraction_of_peak: the JAX step's achieved GFLOP/s (3x the forward FLOPs of
  cnn/network.py:count_flops: every tap of every 3x3 window, padding included, whatever
  an implementation skips) over peak_gflops.
- predict_images_per_s: batched inference + top-3, JAX (jitted, `jax.lax.top_k`) vs PyTorch
  (`torch.topk` under `torch.inference_mode`); predict_ratio_vs_torch.
- bfloat16 (`train.precision: bf16`, docs/design/bf16.md), in the same rounds as the float32
  figures: the JAX step and inference in bf16 (`*_jax_bf16`) against JAX in float32
  (train_ratio_bf16_vs_f32, predict_ratio_bf16_vs_f32) and against PyTorch under
  `torch.autocast("cpu", torch.bfloat16)` in channels_last (`*_torch_bf16`;
  train_ratio_vs_torch_bf16, predict_ratio_vs_torch_bf16). Skipped, with the reason, where
  bf16 falls back to f32 (cnn/conv.py). machine.cpu_model and machine.bf16_isa say which
  CPU the figures are from.
- noop_repro_s: `dvc repro` when nothing changed; embed_only_repro_s: `dvc repro` after
  changing one embed param, with DVC's run cache off so that the two stages really run
  (params.yaml is restored afterwards and embed/evaluate are checked out again from DVC's
  run cache). Needs a completed pipeline; skipped otherwise.
- pairs_images_per_s and pairs_peak_rss_mib: the pairs stage's real CLI on 1,281,167
  pictures x 1,000 classes given as top-10 indices (synthetic, generated in a temp folder).

Writes benchmarks/results.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import yaml
from flax import nnx

from confusion_embeddings import devices, host
from confusion_embeddings.cnn import conv
from confusion_embeddings.cnn.config import RunConfig
from confusion_embeddings.cnn.inference import make_inference_fn
from confusion_embeddings.cnn.network import CNN, ModelConfig, count_flops
from confusion_embeddings.cnn.training import create_train_state, make_train_step
from confusion_embeddings.config.embed import SCHEMA as EMBED
from confusion_embeddings.config.predict import SCHEMA as PREDICT
from confusion_embeddings.config.train import SCHEMA as TRAIN_SCHEMA
from confusion_embeddings.core.params import validate_section

ROOT = Path(__file__).resolve().parents[1]
# Inference is timed at the predict stage's default batch.
PREDICT_BATCH = PREDICT["batch_size"].default


class Timing(NamedTuple):
    """Seconds per repetition (median, min, max), and what the kernel did per repetition."""

    median: float
    min: float
    max: float
    # Minor page faults and kernel CPU seconds of the whole process, per repetition: a
    # step that page-faults its working set afresh (see host.py: reuse_host_memory) shows
    # up here long before anyone profiles it.
    minor_faults: float
    kernel_s: float


def timed(fn, reps: int, warmup: int = 2) -> Timing:
    """Time fn() over reps runs after warmup runs."""
    for _ in range(warmup):
        fn()
    ts = []
    before = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    after = resource.getrusage(resource.RUSAGE_SELF)
    return Timing(
        float(np.median(ts)),
        float(min(ts)),
        float(max(ts)),
        (after.ru_minflt - before.ru_minflt) / reps,
        (after.ru_stime - before.ru_stime) / reps,
    )


def rate(items: int, t: Timing) -> dict:
    """Items per second: the median and the spread (from the slowest and fastest rep)."""
    return {
        "median": items / t.median,
        "min": items / t.max,
        "max": items / t.min,
        "minor_faults_per_rep": t.minor_faults,
        "kernel_s_per_rep": t.kernel_s,
    }


def peak_gflops(reps: int) -> dict:
    n = 2048
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n), np.float32))
    f = jax.jit(lambda x: x @ x)
    gflop = 2 * n**3 / 1e9
    r = rate(1, timed(lambda: f(a).block_until_ready(), reps))
    return {k: r[k] * gflop for k in ("median", "min", "max")}


# --------------------------------------------------------------------------- train step


def jax_train(
    run: RunConfig,
    batch: np.ndarray,
    labels: np.ndarray,
    reps: int,
    augment: bool,
    n_devices: int | None = None,
) -> dict:
    t = run.train
    t = dataclasses.replace(t, translate=t.translate if augment else 0, flip=t.flip and augment)
    steps = 1000  # the schedule's length (and lookahead's, where on): any will do here
    graphdef, state, tx = create_train_state(run, total_steps=steps)  # as train does
    step = make_train_step(graphdef, tx, (jnp.full(3, 120.0), jnp.full(3, 60.0)), t, steps)
    with devices.data_parallel(n_devices) as mesh:  # as in the train stage
        box = [jax.device_put(state, devices.replicated(mesh))]
        x, y = jax.device_put((batch, labels), devices.batch_sharded(mesh))

        def one():
            box[0], loss, _ = step(box[0], x, y)
            loss.block_until_ready()

        return rate(len(batch), timed(one, reps))


def torch_train(
    p: dict,
    cfg: ModelConfig,
    batch: np.ndarray,
    labels: np.ndarray,
    reps: int,
    channels_last: bool,
    bf16: bool = False,
) -> dict:
    import contextlib

    import torch

    from benchmarks.torch_reference import TorchCNN

    torch.manual_seed(0)
    model = TorchCNN(cfg)
    x = (torch.from_numpy(batch).permute(0, 3, 1, 2).float() - 120.0) / 60.0
    x = x.contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format
    )
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    y = torch.from_numpy(labels).long()
    opt = torch.optim.SGD(
        [q for q in model.parameters() if q.requires_grad],
        lr=0.01,
        momentum=p["momentum"],
        nesterov=p["nesterov"],
        weight_decay=p["weight_decay"],
    )
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=p["label_smoothing"])

    def autocast():
        # PyTorch's mixed precision: bf16 convolutions and matmuls, float32 weights.
        if bf16:
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def one():
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()

    return rate(len(batch), timed(one, reps))


# --------------------------------------------------------------------------- predict


def jax_predict(
    cfg: ModelConfig, batch: np.ndarray, reps: int, n_devices: int | None = None, k: int = 3
) -> dict:
    graphdef, params, rest = nnx.split(CNN(cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)
    infer = make_inference_fn(graphdef, (np.full(3, 120.0), np.full(3, 60.0)))
    topk = jax.jit(lambda pr, r, x: jax.lax.top_k(jax.nn.softmax(infer(pr, r, x)), k))
    with devices.data_parallel(n_devices) as mesh:  # as in the predict stage
        params, rest = jax.device_put((params, rest), devices.replicated(mesh))
        x = jax.device_put(batch, devices.batch_sharded(mesh))
        return rate(len(batch), timed(lambda: jax.block_until_ready(topk(params, rest, x)), reps))


def torch_predict(
    cfg: ModelConfig, batch: np.ndarray, reps: int, channels_last: bool, k: int = 3, bf16=False
) -> dict:
    import torch

    from benchmarks.torch_reference import TorchCNN

    model = TorchCNN(cfg).eval()
    x = (torch.from_numpy(batch).permute(0, 3, 1, 2).float() - 120.0) / 60.0
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def one():
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            torch.topk(torch.softmax(model(x).float(), 1), k)

    return rate(len(batch), timed(one, reps))


# --------------------------------------------------------------------------- dvc


def _dvc(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`dvc ARGS` in the project, with this interpreter's environment first on PATH: the
    stages run as `python -m stages.<name>` and need the same packages as this process,
    also when the benchmark was started as `.venv/bin/python -m benchmarks.run`."""
    env = {
        **os.environ,
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    return subprocess.run(
        ["dvc", *args], cwd=ROOT, env=env, check=check, capture_output=True, text=True
    )


def _repro_seconds(*flags: str) -> float:
    t = time.perf_counter()
    _dvc("repro", *flags)
    return time.perf_counter() - t


def repro_times(reps: int) -> dict:
    status = _dvc("status", check=False)
    if status.returncode or "up to date" not in status.stdout:
        print("  (skipped: the pipeline is not up to date; run `dvc repro` first)")
        return {}
    noop = timed(_repro_seconds, reps, warmup=1)
    params_file = ROOT / "params.yaml"
    original = params_file.read_text()
    doc = yaml.safe_load(original)
    try:
        doc["embed"]["alpha"] = float(doc["embed"].get("alpha", EMBED["alpha"].default)) * 1.01
        params_file.write_text(yaml.safe_dump(doc, sort_keys=False))
        # --no-run-cache: this same edit was made by the last benchmark run, and DVC would
        # restore its outputs from the run cache instead of running embed and evaluate.
        embed_only = _repro_seconds("--no-run-cache")
    finally:
        params_file.write_text(original)
        _dvc("repro")
    return {
        "noop_repro_s": {"median": noop.median, "min": noop.min, "max": noop.max},
        "embed_only_repro_s": {"median": embed_only, "min": embed_only, "max": embed_only},
    }


def pairs_many_classes(n: int) -> dict:
    from benchmarks.pairs_many_classes import run_stage, write_synthetic_topk

    tmp = Path(tempfile.mkdtemp(prefix="bench-pairs-"))
    try:
        pred = tmp / "predictions.npz"
        write_synthetic_topk(pred, n=n, c=1000, k=10, seed=0)
        # One predictions file, no --seeds: the pairs stage reads it as one classifier's.
        (tmp / "params.yaml").write_text(yaml.safe_dump({"pairs": {"top_k": 3}}))
        seconds, rss_mib = run_stage(
            "pairs",
            [
                "--predictions",
                str(pred),
                "--out",
                str(tmp / "pairs"),
                "--metrics",
                str(tmp / "pairs.json"),
                "--params",
                str(tmp / "params.yaml"),
            ],
        )
        return {
            "pairs_images_per_s": n / seconds,
            "pairs_seconds": seconds,
            "pairs_peak_rss_mib": rss_mib,
            "pairs_pictures": n,
            "pairs_classes": 1000,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- rounds


def side_by_side(rounds: int, measures: dict) -> dict[str, list[dict]]:
    """Run every measurement once per round, in turn; {name: [rate dict per round]}."""
    out: dict[str, list[dict]] = {k: [] for k in measures}
    for _ in range(rounds):
        for k, measure in measures.items():
            out[k].append(measure())
    return out


def pooled(per_round: list[dict]) -> dict:
    """One figure over rounds: the median of the round medians, the spread of all reps."""
    out = {
        "median": float(np.median([r["median"] for r in per_round])),
        "min": min(r["min"] for r in per_round),
        "max": max(r["max"] for r in per_round),
        "rounds": [r["median"] for r in per_round],
    }
    for k in ("minor_faults_per_rep", "kernel_s_per_rep"):  # medians over rounds
        if all(k in r for r in per_round):
            out[k] = float(np.median([r[k] for r in per_round]))
    return out


def over_rounds(values: list[float]) -> dict:
    """A quantity computed within each round (a ratio): the median over rounds, its range."""
    return {
        "median": float(np.median(values)),
        "min": min(values),
        "max": max(values),
        "rounds": values,
    }


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), or what the platform module says."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def ratio_over_rounds(
    per_round: dict[str, list[dict]], jax_key: str, torch_keys: tuple[str, ...]
) -> dict:
    """JAX / (PyTorch's faster layout), within each round; the median over rounds."""
    return over_rounds(
        [
            j["median"] / max(per_round[k][i]["median"] for k in torch_keys)
            for i, j in enumerate(per_round[jax_key])
        ]
    )


# --------------------------------------------------------------------------- main


class Bench(NamedTuple):
    """What every measurement of one run shares: params.yaml's train section, the network in
    float32 (and in bf16 where it runs natively: else None), the inputs, the repetitions."""

    params: dict
    run: RunConfig
    run_bf16: RunConfig | None
    batch: np.ndarray  # a train batch of random pictures, and its labels
    labels: np.ndarray
    pbatch: np.ndarray  # a predict batch
    flops_train: int  # per picture, forward and backward
    reps: int
    rounds: int

    @property
    def cfg(self) -> ModelConfig:
        return self.run.model

    @property
    def cfg_bf16(self) -> ModelConfig | None:
        return self.run_bf16.model if self.run_bf16 else None


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions, 100k pairs")
    ap.add_argument("--skip-repro", action="store_true", help="skip the dvc timings")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results.json"))
    return ap.parse_args()


def prepare(quick: bool) -> tuple[Bench, dict]:
    """The process set up as the train and predict stages set it up, before JAX starts:
    freed host memory reused (for PyTorch too, which runs in this process), and on CPU one
    JAX device per core. Returns the run's Bench and the machine's description."""
    p = validate_section(
        "train", yaml.safe_load((ROOT / "params.yaml").read_text())["train"], TRAIN_SCHEMA
    )
    choice = conv.resolve(p["conv_impl"], "f32")
    bf16 = conv.resolve(p["conv_impl"], "bf16")  # the same convolution, or a warning why not
    setup = host.prepare_host(p["cpu_devices"], [p["batch_size"], PREDICT_BATCH], choice.impl)
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    # The float32 figures are float32 whatever params.yaml's precision; bf16 ones are named so.
    run = RunConfig.resolve(p, 0, 10, choice)
    run_bf16 = run.running(bf16) if bf16.precision == "bf16" else None
    if run_bf16 is None:
        print(f"skipping the bf16 figures: {bf16.warning}", flush=True)
    rng = np.random.default_rng(0)
    bs = p["batch_size"]
    batch = rng.integers(0, 256, (bs, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, bs).astype(np.int32)
    pbatch = rng.integers(0, 256, (PREDICT_BATCH, 32, 32, 3), dtype=np.uint8)
    flops = 3 * count_flops(run.model, (32, 32))
    reps, rounds = (3, 2) if quick else (7, 3)
    bench = Bench(p, run, run_bf16, batch, labels, pbatch, flops, reps, rounds)
    return bench, machine(bf16.warning or "measured", setup.memory_reused)


def machine(bf16_figures: str, memory_reused) -> dict:
    import torch

    return {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "torch": torch.__version__,
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "cpu_isa": host.cpu_isa(),
        "bf16_isa": [f for f in host.BF16_ISA if f in host.cpu_isa().split()],
        "bf16_figures": bf16_figures,
        "host_memory_reused": memory_reused,
    }


def network(b: Bench) -> dict:
    return {
        "batch_size": b.params["batch_size"],
        **dataclasses.asdict(b.cfg),
        "gflops_train_per_image": b.flops_train / 1e9,
    }


def _with_sgd(run: RunConfig | None) -> RunConfig | None:
    """The run with every parameter under SGD (train.optimizer: sgd), as PyTorch's step."""
    if run is None:
        return None
    return dataclasses.replace(run, train=dataclasses.replace(run.train, optimizer="sgd"))


def _as_pipeline(b: Bench) -> RunConfig:
    """The run as the train stage trains it: in bf16 where params.yaml asks for it and it
    runs here, else in float32."""
    return b.run_bf16 if b.run_bf16 is not None and b.params["precision"] == "bf16" else b.run


def train_measures(b: Bench) -> dict:
    """The peak matmul and every train step, each a function returning its figure."""
    p, cfg, batch, labels, reps = b.params, b.cfg, b.batch, b.labels, b.reps
    # Against PyTorch's SGD step, JAX's SGD step: the same work. The default optimizer's
    # step (Muon's orthogonalisation on top) is measured beside it, against that SGD step.
    sgd, sgd_bf16 = _with_sgd(b.run), _with_sgd(b.run_bf16)
    measures = {
        "peak_gflops": lambda: peak_gflops(reps),
        "train_images_per_s_jax": lambda: jax_train(sgd, batch, labels, reps, False),
        "train_images_per_s_jax_with_augmentation": lambda: jax_train(
            sgd, batch, labels, reps, True
        ),
        "train_images_per_s_jax_one_device": lambda: jax_train(
            sgd, batch, labels, reps, False, n_devices=1
        ),
        "train_images_per_s_torch_channels_last": lambda: torch_train(
            p, cfg, batch, labels, reps, channels_last=True
        ),
        "train_images_per_s_torch_contiguous": lambda: torch_train(
            p, cfg, batch, labels, reps, channels_last=False
        ),
    }
    if b.run.train.optimizer != "sgd":
        measures["train_images_per_s_jax_default_optimizer"] = lambda: jax_train(
            b.run, batch, labels, reps, False
        )
    measures["train_images_per_s_jax_pipeline_step"] = lambda: jax_train(
        _as_pipeline(b), batch, labels, reps, True
    )
    if sgd_bf16 is not None:
        measures["train_images_per_s_jax_bf16"] = lambda: jax_train(
            sgd_bf16, batch, labels, reps, False
        )
        measures["train_images_per_s_torch_bf16_channels_last"] = lambda: torch_train(
            p, cfg, batch, labels, reps, channels_last=True, bf16=True
        )
    return measures


def measure_train(b: Bench) -> dict:
    """The train figures, their ratios within each round, and the step's share of the peak."""
    print(f"measuring peak matmul and train steps ({b.rounds} rounds) ...", flush=True)
    train = side_by_side(b.rounds, train_measures(b))
    res = {k: pooled(v) for k, v in train.items()}
    res["train_ratio_vs_torch"] = ratio_over_rounds(
        train,
        "train_images_per_s_jax",
        ("train_images_per_s_torch_channels_last", "train_images_per_s_torch_contiguous"),
    )
    if "train_images_per_s_jax_default_optimizer" in train:
        res["train_ratio_default_optimizer_vs_sgd"] = ratio_over_rounds(
            train, "train_images_per_s_jax_default_optimizer", ("train_images_per_s_jax",)
        )
    same_precision_sgd = (
        "train_images_per_s_jax_bf16" if _as_pipeline(b) is b.run_bf16 else "train_images_per_s_jax"
    )
    res["train_ratio_pipeline_step_vs_sgd"] = ratio_over_rounds(
        train, "train_images_per_s_jax_pipeline_step", (same_precision_sgd,)
    )
    if b.run_bf16 is not None:
        res["train_ratio_bf16_vs_f32"] = ratio_over_rounds(
            train, "train_images_per_s_jax_bf16", ("train_images_per_s_jax",)
        )
        res["train_ratio_vs_torch_bf16"] = ratio_over_rounds(
            train, "train_images_per_s_jax_bf16", ("train_images_per_s_torch_bf16_channels_last",)
        )
    gflop = b.flops_train / 1e9
    res["train_gflops_jax"] = res["train_images_per_s_jax"]["median"] * gflop
    # Within each round too: the matmul peak moves with the machine's phases like the rest.
    res["train_fraction_of_peak"] = over_rounds(
        [
            j["median"] * gflop / pk["median"]
            for j, pk in zip(train["train_images_per_s_jax"], train["peak_gflops"], strict=True)
        ]
    )
    return res


def predict_measures(b: Bench) -> dict:
    """Every inference + top-k, each a function returning its figure."""
    cfg, pbatch, reps = b.cfg, b.pbatch, b.reps
    measures = {
        "predict_images_per_s_jax": lambda: jax_predict(cfg, pbatch, reps),
        "predict_images_per_s_jax_one_device": lambda: jax_predict(cfg, pbatch, reps, n_devices=1),
        "predict_images_per_s_torch_channels_last": lambda: torch_predict(
            cfg, pbatch, reps, channels_last=True
        ),
        "predict_images_per_s_torch_contiguous": lambda: torch_predict(
            cfg, pbatch, reps, channels_last=False
        ),
    }
    if b.cfg_bf16 is not None:
        measures["predict_images_per_s_jax_bf16"] = lambda: jax_predict(b.cfg_bf16, pbatch, reps)
        measures["predict_images_per_s_torch_bf16_channels_last"] = lambda: torch_predict(
            cfg, pbatch, reps, channels_last=True, bf16=True
        )
    return measures


def measure_predict(b: Bench) -> dict:
    """The inference figures and their ratios within each round."""
    print(f"measuring inference + top-k ({b.rounds} rounds) ...", flush=True)
    predict = side_by_side(b.rounds, predict_measures(b))
    res = {k: pooled(v) for k, v in predict.items()}
    res["predict_ratio_vs_torch"] = ratio_over_rounds(
        predict,
        "predict_images_per_s_jax",
        ("predict_images_per_s_torch_channels_last", "predict_images_per_s_torch_contiguous"),
    )
    if b.cfg_bf16 is not None:
        res["predict_ratio_bf16_vs_f32"] = ratio_over_rounds(
            predict, "predict_images_per_s_jax_bf16", ("predict_images_per_s_jax",)
        )
        res["predict_ratio_vs_torch_bf16"] = ratio_over_rounds(
            predict,
            "predict_images_per_s_jax_bf16",
            ("predict_images_per_s_torch_bf16_channels_last",),
        )
    return res


def write(res: dict, out: str) -> None:
    Path(out).write_text(json.dumps(res, indent=2) + "\n")


def main() -> None:
    args = parse_args()
    bench, host_info = prepare(args.quick)
    res: dict = {"machine": host_info, "network": network(bench)}
    # JAX and PyTorch take turns, `rounds` times: a slow phase of this (noisy, shared)
    # machine then lowers one round of every figure instead of all of one engine's. Each
    # ratio is the median over rounds of the ratio measured within the round.
    res.update(measure_train(bench))
    res.update(measure_predict(bench))
    # Written now too: the network's figures survive a failure in the stages' timings below.
    write(res, args.out)
    if not args.skip_repro:
        print("measuring dvc repro ...", flush=True)
        res.update(repro_times(3 if args.quick else 5))
    print("measuring the pairs stage at ImageNet size ...", flush=True)
    res.update(pairs_many_classes(100_000 if args.quick else 1_281_167))
    write(res, args.out)
    print_table(res)


def print_table(res: dict) -> None:
    def fmt(v):
        if isinstance(v, dict):
            d = 3 if v["median"] < 10 else 1
            text = f"{v['median']:10.{d}f}  ({v['min']:.{d}f} - {v['max']:.{d}f})"
            if "minor_faults_per_rep" in v:
                text += (
                    f"  [{v['minor_faults_per_rep']:,.0f} faults,"
                    f" {v['kernel_s_per_rep']:.3f} s kernel per rep]"
                )
            return text
        return f"{v:10.3f}" if isinstance(v, float) else str(v)

    print(f"\n{'figure':45s} {'median':>10s}  (spread)")
    for k, v in res.items():
        if k in ("machine", "network"):
            continue
        print(f"{k:45s} {fmt(v)}")


if __name__ == "__main__":
    main()
