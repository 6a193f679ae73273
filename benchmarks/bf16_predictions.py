"""The same trained weights run in float32 and in bfloat16: how far do the guesses and the
class-similarity table move, and should predict's softmax and top-k see bf16 or f32 logits?

    python -m benchmarks.bf16_predictions --model models/cnn/seed_0 --prepared data/prepared \
        [--noise-floor] [--out reports/bf16_predictions.json]

Every variant runs the model's own test-time augmentation over the chosen splits:
- f32: the network in float32, as predict runs a float32 model (the reference).
- bf16: `train.precision: bf16`'s network (bf16 convolutions and matmuls, float32 logits;
  softmax and top-k on float32), as predict runs a bf16 model.
- bf16_logits: the same, but each view's logits rounded to bfloat16 and the view average
  and softmax computed in bfloat16: what bf16 logits would give.
- f32_xla (--noise-floor): float32 through XLA's convolutions (conv_impl matmul) instead
  of oneDNN's: how far float32 rounding alone moves the same figures.
Against f32, each variant reports: accuracy per split, agreement of the top-1 guess, of the
2nd and of the 3rd, of the whole ordered top 3, and the pictures with a tie among their 4
highest probabilities; then the method's result: pairs (params `pairs.top_k`), the
similarity table of embed engine jax (params' embed section otherwise), and the Spearman
correlation of its 45 upper-triangle cosines with f32's, plus the same for the
confusion-rate table. Needs the oneDNN kernel and a CPU with native bf16. Writes --out.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from confusion_embeddings import devices, host
from confusion_embeddings.cnn import conv

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a model folder written by the train stage")
    ap.add_argument("--prepared", required=True, help="the prepared dataset folder")
    ap.add_argument("--splits", nargs="+", default=["train", "test"])
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--noise-floor", action="store_true", help="also f32 through XLA's convs")
    ap.add_argument("--out", default=str(ROOT / "reports" / "bf16_predictions.json"))
    args = ap.parse_args()

    choice = conv.resolve("auto", "bf16")  # before JAX starts, as the stages do
    if choice.precision != "bf16":
        raise SystemExit(f"bf16 does not run here: {choice.warning}")
    host.prepare_host("auto", [args.batch_size], choice.impl)
    report = run(args, choice.impl)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["against_f32"], indent=2))


def run(args, impl: str) -> dict:
    import jax

    from confusion_embeddings.cnn.checkpoint import load_model, read_config
    from confusion_embeddings.cnn.conv import ConvChoice
    from confusion_embeddings.cnn.inference import make_inference_fn, softmax
    from confusion_embeddings.data.prepared import load_prepared

    data = load_prepared(args.prepared, args.splits)
    variants = {"f32": (impl, "f32"), "bf16": (impl, "bf16"), "bf16_logits": (impl, "bf16")}
    if args.noise_floor:
        variants["f32_xla"] = ("matmul", "f32")
    probs, seconds = {}, {}
    with devices.data_parallel() as mesh:
        for name, (conv_impl, precision) in variants.items():
            saved = read_config(args.model)
            m = load_model(args.model, saved.running(ConvChoice(conv_impl, precision)))
            params, rest = jax.device_put((m.params, m.rest), devices.replicated(mesh))
            tta = {"tta_flip": saved.train.tta_flip, "tta_translate": saved.train.tta_translate}
            if name == "bf16_logits":
                infer = _bf16_logits_fn(m.graphdef, m.norm, **tta)
            else:
                infer = make_inference_fn(m.graphdef, m.norm, **tta)
            t0 = time.perf_counter()
            out = []
            for split in args.splits:
                logits = devices.map_batches(
                    lambda x, infer=infer, params=params, rest=rest: infer(params, rest, x),
                    data.splits[split].images,
                    args.batch_size,
                    mesh,
                    show_progress=True,
                    desc=f"{name} {split}",
                )
                # predict's own softmax (float32, numpy) unless the variant made probabilities.
                out.append(logits if name == "bf16_logits" else softmax(logits))
            probs[name] = np.concatenate(out).astype(np.float32)
            seconds[name] = round(time.perf_counter() - t0, 1)
    # bf16 probabilities do not sum to 1 within the predictions file's 1e-3: say by how much,
    # then renormalise (the order, which is all pairs reads, stays).
    sums = probs["bf16_logits"].sum(axis=1, keepdims=True)
    row_sum_error = float(np.abs(sums - 1).max())
    probs["bf16_logits"] = (probs["bf16_logits"] / sums).astype(np.float32)
    report = compare(data, args.splits, probs, seconds)
    report["bf16_logits_max_row_sum_error"] = round(row_sum_error, 6)
    return report


def _bf16_logits_fn(graphdef, norm, tta_flip: bool, tta_translate: int):
    """make_inference_fn's views with every logit, the averages and the softmax in bf16."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    mean, std = (jnp.asarray(a, jnp.float32) for a in norm)
    bf16 = jnp.bfloat16

    def infer(params, rest, images):
        model = nnx.merge(graphdef, params, rest)
        model.eval()
        x = (images.astype(jnp.float32) - mean) / std

        def views(v):
            logits = model(v).astype(bf16)
            if tta_flip:
                logits = bf16(0.5) * (logits + model(v[:, :, ::-1, :]).astype(bf16))
            return logits

        logits = views(x)
        if tta_translate:
            t, (h, w) = tta_translate, x.shape[1:3]
            xp = jnp.pad(x, ((0, 0), (t, t), (t, t), (0, 0)), mode="reflect")
            shifted = views(xp[:, :h, :w]) + views(xp[:, 2 * t :, 2 * t :])
            logits = bf16(0.5) * logits + bf16(0.25) * shifted
        return jax.nn.softmax(logits, axis=-1).astype(jnp.float32)

    return jax.jit(infer)


def compare(data, splits: list[str], probs: dict[str, np.ndarray], seconds: dict) -> dict:
    from scipy.stats import spearmanr

    from confusion_embeddings.config.embed import EmbedConfig
    from confusion_embeddings.config.pairs import PairsConfig
    from confusion_embeddings.core.files import save_npz
    from confusion_embeddings.embedding.consensus import cosine_matrices
    from confusion_embeddings.embedding.engines import fit_runs
    from confusion_embeddings.evaluation.confusion import confusion_similarity
    from confusion_embeddings.pairs import build_pairs
    from confusion_embeddings.predictions import load_predictions

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    top_k = params["pairs"]["top_k"]
    embed = EmbedConfig.from_params({**params["embed"], "engine": "jax"})
    labels = np.concatenate([data.splits[s].labels for s in splits]).astype(np.int32)
    split_id = np.concatenate(
        [np.full(len(data.splits[s].labels), i) for i, s in enumerate(splits)]
    )
    iu = np.triu_indices(len(data.classes), 1)
    guesses, tables = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, p in probs.items():
            path = Path(tmp) / f"{name}.npz"
            save_npz(
                path,
                {
                    "labels": labels,
                    "classes": np.array(data.classes),
                    "probs": p,
                    "split": split_id.astype(np.int8),
                    "splits": np.array(splits),
                    "groups": np.array(json.dumps(data.groups)),
                },
            )
            pairs = build_pairs(load_predictions(path), top_k, PairsConfig().block_size)
            guesses[name] = pairs.guess.reshape(-1, top_k)
            cosines = cosine_matrices(fit_runs(pairs, embed)).mean(axis=0)
            tables[name] = (cosines, confusion_similarity(pairs))
    report: dict = {"seconds": seconds, "pictures": int(len(labels)), "against_f32": {}}
    ref = guesses["f32"]
    for name, p in probs.items():
        top4 = -np.sort(-p, axis=1)[:, :4]
        g = guesses[name]
        row = {
            "accuracy": {
                s: round(float((g[split_id == i, 0] == labels[split_id == i]).mean()), 6)
                for i, s in enumerate(splits)
            },
            "top1_agreement": round(float((g[:, 0] == ref[:, 0]).mean()), 6),
            "rank_agreement": [
                round(float((g[:, r] == ref[:, r]).mean()), 6) for r in range(top_k)
            ],
            f"top{top_k}_order_agreement": round(float((g == ref).all(axis=1).mean()), 6),
            "ties_in_top4": round(float((np.diff(top4, axis=1) == 0).any(axis=1).mean()), 6),
            "embed_jax_table_spearman": round(
                float(spearmanr(tables[name][0][iu], tables["f32"][0][iu]).statistic), 6
            ),
            "embed_jax_table_max_abs_diff": round(
                float(np.abs(tables[name][0] - tables["f32"][0]).max()), 6
            ),
            "confusion_table_spearman": round(
                float(spearmanr(tables[name][1][iu], tables["f32"][1][iu]).statistic), 6
            ),
        }
        report["against_f32"][name] = row
    return report


if __name__ == "__main__":
    main()
