"""The leave-one-class-out classifiers' logits, for the novelty scores that need them.

    python -m method_studies.novelty_logits                # every experiment named loco-<class>
    python -m method_studies.novelty_logits --only ship dog

For experiments whose predict stage wrote probabilities (predict.scores: probs, the default
before logits): probabilities keep the logits only up to each picture's own constant,
enough for max_prob, spread and the Mahalanobis scores (novelty.py centres the scores), not
for max_logit or energy. For each such experiment this restores its classifier (train@0's
model folder in the experiment's dvc.lock) from the local DVC cache, runs predict's core on
it over every picture of data/prepared (cnn/inference.py's predict_splits with
scores="logits") and writes that predictions file to
.cache/novelty_logits/<experiment>.npz (git-ignored; rerun to rebuild).
`python -m method_studies.novelty_study` reads that file where it exists. Experiments whose
predict wrote logits are skipped.

It checks that the softmax of the logits is the experiment's own predictions file (the same
model, pictures and views), so the logit scores belong to the classifier the other scores
were measured on. Costs one predict per experiment (2-4 min on a 2-core CPU).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import yaml

from confusion_embeddings.cnn import conv
from confusion_embeddings.cnn.checkpoint import load_model, read_config
from confusion_embeddings.cnn.inference import predict_splits, softmax
from confusion_embeddings.cnn.run import start_host
from confusion_embeddings.config.predict import SCHEMA as PREDICT_SCHEMA
from confusion_embeddings.core.files import atomic_file, save_npz
from confusion_embeddings.core.params import params_section, read_params_file
from confusion_embeddings.data.prepared import load_prepared
from confusion_embeddings.data.selection import known_classes
from confusion_embeddings.predictions import load_predictions
from method_studies.novelty_study import (
    CACHE,
    LOGITS,
    MODEL_PATH,
    PREDICTIONS_PATH,
    PREPARED_PATH,
    ROOT,
    cached,
    experiment_lock,
    experiments,
    logits_file,
    predictions_file,
)

PREPARED = ROOT / PREPARED_PATH
# The largest |softmax(logits) - probs| accepted as "the same predictions": float32 rounding
# of one deterministic run, with room for a different thread split of the sums.
SAME_PROBS = 1e-4


def _restore_dir(listing_file: Path, into: Path) -> Path:
    """Copy a DVC-tracked folder (its `.dir` listing in the cache) into `into`."""
    listing = json.loads(listing_file.read_text())
    for entry in listing:
        target = into / entry["relpath"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(CACHE / entry["md5"][:2] / entry["md5"][2:], target)
    return into


def write_logits(experiment: str, lock: dict) -> Path:
    """Run the experiment's classifier over every picture; write its logits file."""
    workspace = yaml.safe_load((ROOT / "dvc.lock").read_text())
    if cached(lock, "prepare", PREPARED_PATH) != cached(workspace, "prepare", PREPARED_PATH):
        raise SystemExit(
            f"{experiment} was trained on other prepared data than data/prepared holds; "
            "`dvc checkout prepare` or rerun the experiment"
        )
    params_file = ROOT / "params.yaml"
    doc = read_params_file(params_file)
    predict = params_section(doc, "predict", PREDICT_SCHEMA, params_file)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = _restore_dir(cached(lock, "train@0", MODEL_PATH), Path(tmp))
        saved = read_config(model_dir)
        choice = conv.resolve_saved(saved.conv_impl, saved.precision)
        start_host(choice, saved.train.cpu_devices, [predict["batch_size"]], doc, params_file)
        model = load_model(model_dir, saved.running(choice))
    data = load_prepared(PREPARED, predict["splits"])
    known = known_classes(data.classes, saved.train.unseen)
    arrays, _ = predict_splits(
        data, model, known, predict["splits"], predict["batch_size"], scores="logits"
    )
    _check_same(experiment, lock, softmax(arrays["logits"]), np.asarray(known))
    LOGITS.mkdir(parents=True, exist_ok=True)
    with atomic_file(logits_file(experiment)) as tmp:
        save_npz(tmp, arrays)
    return logits_file(experiment)


def _check_same(experiment: str, lock: dict, probs: np.ndarray, known: np.ndarray) -> None:
    with np.load(cached(lock, "predict@0", PREDICTIONS_PATH)) as f:
        theirs = f["probs"][:, known] if f["probs"].shape[1] != len(known) else f["probs"]
    gap = float(np.abs(theirs - probs).max())
    if gap > SAME_PROBS:
        raise SystemExit(
            f"{experiment}: the softmax of the recomputed logits differs from its predict "
            f"output by up to {gap:.2g} (> {SAME_PROBS}); not the same classifier or views"
        )
    print(f"{experiment}: softmax(logits) = its predictions file (max gap {gap:.1e})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prefix", default="loco-", help="experiment names: <prefix><class>")
    ap.add_argument("--only", nargs="*", help="these left-out classes only")
    ap.add_argument("--again", action="store_true", help="rewrite existing logits files")
    args = ap.parse_args()
    found = experiments(args.prefix)
    for cls, name in sorted(found.items()):
        if args.only and cls not in args.only:
            continue
        if logits_file(name).exists() and not args.again:
            print(f"{name}: {logits_file(name)} exists (--again rewrites it)")
            continue
        if load_predictions(predictions_file(name)).kind == "logits":
            print(f"{name}: its predict output holds logits already")
            continue
        print(write_logits(name, experiment_lock(name)))


if __name__ == "__main__":
    main()
