"""The classifier recipe study: which recipe gives ranked guesses the method can read.

    python -m method_studies.recipe_study --repo . --experiments ls0-e10-s0 ls0-e10-s1 ...
    python -m method_studies.recipe_study ... --tta --prepared data/prepared
    python -m method_studies.recipe_study --experiments bf16-e10 HEAD   # experiments, commits

Reads DVC experiments of this pipeline from their dvc.lock in git and their outputs in the
DVC cache. An experiment with one classifier (the paper's setup) is grouped with the others
of its setting by name (names end in `-s<seed>`; the part before is the setting); an
experiment with several classifiers (`classifiers.seeds`) is a setting of its own. Per
setting it reports, as evaluate computes them:
  - test accuracy of every classifier (top-1 on the test split, as predict ran it);
  - agreement between classifiers: the mean pairwise Spearman of their similarity tables
    (each the mean over the embed params' 10 word2vec seeds), with engine jax and gensim;
  - Spearman vs confusion of each classifier's table (jax), and the mean;
  - secondary_vs_confusion: what the 2nd and 3rd guesses alone say (evaluation/scores.py).
With --tta, every classifier of the settings (one per experiment, or the `seed_<s>` of one)
is also run again from its saved weights with test-time augmentation off (1 view), flip only
(2) and flip + translate (6), the same figures per variant (--views picks some of them).

Writes method_studies/recipe_study.json (or --out) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import re
import shutil
import subprocess
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import yaml

from confusion_embeddings.config.embed import EmbedConfig
from confusion_embeddings.config.pairs import PairsConfig
from confusion_embeddings.embedding.consensus import cosine_matrices
from confusion_embeddings.embedding.engines import fit_runs
from confusion_embeddings.evaluation.confusion import (
    confusion_similarity,
    secondary_structure,
    top1_accuracy,
)
from confusion_embeddings.evaluation.ranking import spearman_upper, table_agreement
from confusion_embeddings.pairs import Pairs, build_pairs
from confusion_embeddings.predictions import load_predictions

ROOT = Path(__file__).resolve().parents[1]
PAIRS_DEFAULTS = PairsConfig()
TTA = {"none": (False, 0), "flip": (True, 0), "flip+translate": (True, 1)}


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, check=True, capture_output=True, text=True
    ).stdout


def experiment_refs(repo: Path) -> dict[str, str]:
    refs = _git(repo, "for-each-ref", "--format=%(refname)", "refs/exps").split()
    return {ref.rsplit("/", 1)[1]: ref for ref in refs if "/celery/" not in ref}


@functools.cache
def cache_dir(repo: Path) -> Path:
    """The repository's DVC cache (asked once: each `dvc` call takes a second or so)."""
    out = subprocess.run(
        ["dvc", "cache", "dir"], cwd=repo, check=True, capture_output=True, text=True
    ).stdout
    return Path(out.strip())


def cached(repo: Path, md5: str) -> Path:
    return cache_dir(repo) / "files" / "md5" / md5[:2] / md5[2:]


def outputs(repo: Path, ref: str) -> dict[str, str]:
    """{output path: md5} of every stage in the experiment's dvc.lock."""
    lock = yaml.safe_load(_git(repo, "show", f"{ref}:dvc.lock"))
    return {o["path"]: o["md5"] for stage in lock["stages"].values() for o in stage.get("outs", [])}


def run_predictions(repo: Path, ref: str) -> set[str] | None:
    """The predictions files of the classifiers the run has (`classifiers.seeds` of its
    params.yaml; None where it has no such section). DVC keeps a foreach stage's lock
    entries for seeds a run no longer has (an experiment with `classifiers.seeds: [3, 4, 5]`
    queued from a run of [0, 1, 2] carries predict@0..2 in its lock too)."""
    params = yaml.safe_load(_git(repo, "show", f"{ref}:params.yaml"))
    seeds = (params.get("classifiers") or {}).get("seeds")
    return None if seeds is None else {f"data/predictions/seed_{s}.npz" for s in seeds}


def prediction_files(outs: dict[str, str], used: set[str] | None = None) -> dict[str, str]:
    """{classifier: md5} of an experiment's predictions files: `data/predictions/seed_<s>.npz`
    per classifier (predict@<s>; of those, the ones in `used` where given: run_predictions),
    or else `data/predictions.npz` (the single-classifier layout of earlier commits, whose
    entry a later dvc.lock may still carry)."""
    found = {
        path.rsplit("/", 1)[1].removesuffix(".npz"): md5
        for path, md5 in outs.items()
        if re.fullmatch(r"data/predictions/seed_\d+\.npz", path) and (used is None or path in used)
    }
    if not found and "data/predictions.npz" in outs:
        found = {"predictions": outs["data/predictions.npz"]}
    if not found:
        raise SystemExit(f"no predictions file in the experiment's dvc.lock: {sorted(outs)}")
    return found


def pairs_of(predictions: Path, name: str) -> Pairs:
    """A predictions file's pairs at the pairs stage's default top_k and block size."""
    return build_pairs(
        load_predictions(predictions), PAIRS_DEFAULTS.top_k, PAIRS_DEFAULTS.block_size, name
    )


def figures(pairs_list: list[Pairs]) -> dict:
    tables = {}
    for engine in ("jax", "gensim"):
        params = EmbedConfig(engine=engine)
        tables[engine] = np.stack(
            [cosine_matrices(fit_runs(p, params)).mean(axis=0) for p in pairs_list]
        )
    vs_conf = [
        spearman_upper(t, confusion_similarity(p))
        for t, p in zip(tables["jax"], pairs_list, strict=True)
    ]
    secondary = [secondary_structure(p) for p in pairs_list]
    return {
        "test_accuracy": [round(top1_accuracy(p), 4) for p in pairs_list],
        "agreement_jax": round(table_agreement(tables["jax"]), 4),
        "agreement_gensim": round(table_agreement(tables["gensim"]), 4),
        "spearman_vs_confusion": [round(v, 4) for v in vs_conf],
        "secondary_vs_confusion": [round(v, 4) for v in secondary],
        "mean_spearman_vs_confusion": round(float(np.mean(vs_conf)), 4),
        "mean_secondary_vs_confusion": round(float(np.mean(secondary)), 4),
    }


def model_folder(repo: Path, md5: str) -> Path:
    """A cached model folder (DVC's .dir listing) copied to a temporary folder."""
    folder = Path(tempfile.mkdtemp(prefix="recipe-model-"))
    for entry in json.loads(cached(repo, md5).read_text()):
        shutil.copy(cached(repo, entry["md5"]), folder / entry["relpath"])
    config = json.loads((folder / "config.json").read_text())
    if "run" not in config:
        config = {**config, "run": run_of_old_config(config)}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def run_of_old_config(config: dict) -> dict:
    """The RunConfig (as a dict) of a model saved before config.json held one: its network
    ("model") and inference settings ("inference", absent in the oldest) over the train
    params' defaults, which every recipe studied here kept for what was not recorded."""
    from confusion_embeddings.config.train import SCHEMA
    from confusion_embeddings.core.params import defaults

    model, inference = config["model"], config.get("inference", {})
    holdout = inference.get("holdout")
    shape = ("stem_width", "widths", "stem_patch", "bn_momentum", "logit_scale")
    train = {
        **defaults(SCHEMA),
        **{k: model[k] for k in shape if k in model},
        **{k: inference[k] for k in ("tta_flip", "tta_translate", "cpu_devices") if k in inference},
        "crossfit_folds": holdout["folds"] if holdout else 0,
    }
    return {
        "seed": holdout["fold"] if holdout else 0,  # the seed matters for its fold only
        "num_classes": model["num_classes"],
        "train": train,
        "conv_impl": model["conv_impl"],
        "precision": model.get("precision", "f32"),
    }


def tta_pairs(model: Path, prepared: Path, flip: bool, translate: int, name: str) -> Pairs:
    from confusion_embeddings.cnn.checkpoint import load_model
    from confusion_embeddings.cnn.inference import predict_splits
    from confusion_embeddings.core.files import save_npz
    from confusion_embeddings.data.prepared import load_prepared
    from confusion_embeddings.data.selection import known_classes

    m = load_model(model)
    tta = dataclasses.replace(m.run.train, tta_flip=flip, tta_translate=translate)
    data = load_prepared(prepared, ["train", "test"])
    arrays, _ = predict_splits(
        data,
        dataclasses.replace(m, run=dataclasses.replace(m.run, train=tta)),
        known_classes(data.classes, m.run.train.unseen),
        ["train", "test"],
        1000,
        show_progress=False,
    )
    path = model / f"predictions-{flip}-{translate}.npz"
    save_npz(path, arrays)
    return pairs_of(path, name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", type=Path, default=ROOT)
    ap.add_argument("--experiments", nargs="+", required=True)
    ap.add_argument("--tta", action="store_true", help="also rerun predict with TTA variants")
    ap.add_argument("--prepared", type=Path, help="the prepared data (for --tta)")
    ap.add_argument(
        "--views",
        nargs="+",
        choices=list(TTA),
        default=list(TTA),
        help="the TTA variants --tta reruns (default: all)",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "method_studies" / "recipe_study.json")
    args = ap.parse_args()
    refs = experiment_refs(args.repo)
    # setting -> [(classifier name, its model folder's md5 or None, its predictions md5)]
    settings: dict[str, list[tuple[str, str | None, str]]] = defaultdict(list)
    for name in args.experiments:
        rev = refs.get(name, name)  # an experiment, or any git revision
        outs = outputs(args.repo, rev)
        files = prediction_files(outs, run_predictions(args.repo, rev))
        for c, md5 in files.items():
            model = outs.get(f"models/cnn/{c}" if c.startswith("seed_") else "models/cnn")
            if len(files) == 1:
                settings[re.sub(r"-s\d+$", "", name)].append((name, model, md5))
            else:
                settings[name].append((f"{name}/{c}", model, md5))
    results = {}
    for setting, members in settings.items():
        names = [n for n, _, _ in members]
        pairs = [pairs_of(cached(args.repo, md5), n) for n, _, md5 in members]
        results[setting] = {"classifiers": names, **figures(pairs)}
        print(setting, json.dumps(results[setting]), flush=True)
        if not args.tta:
            continue
        if any(m is None for _, m, _ in members):
            print(f"{setting}: --tta needs every classifier's model folder; skipped")
            continue
        models = [model_folder(args.repo, m) for _, m, _ in members]
        for variant in args.views:
            flip, translate = TTA[variant]
            variant_pairs = [
                tta_pairs(m, args.prepared, flip, translate, n)
                for m, n in zip(models, names, strict=True)
            ]
            key = f"{setting}, TTA {variant}"
            results[key] = {"classifiers": names, **figures(variant_pairs)}
            print(key, json.dumps(results[key]), flush=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(
        "\n| setting | test accuracy | agreement (jax / gensim) | Spearman vs confusion | "
        "2nd-3rd guesses vs mistakes |\n|---|---|---|---|---|"
    )
    for key, r in results.items():
        print(
            f"| {key} | {', '.join(f'{a:.4f}' for a in r['test_accuracy'])} | "
            f"{r['agreement_jax']:.3f} / {r['agreement_gensim']:.3f} | "
            f"{r['mean_spearman_vs_confusion']:.3f} | {r['mean_secondary_vs_confusion']:.3f} |"
        )


if __name__ == "__main__":
    main()
