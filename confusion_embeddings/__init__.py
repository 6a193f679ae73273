"""Class embeddings from a classifier's mistakes (Sustek & Zboril), as a library.

The DVC stages under `stages/` are thin entry points over these modules:

    data/         picture sources (folders, archives, CIFAR pickles) and the prepared arrays
    cnn/          the Flax CNN: its run config, network, convolutions (XLA, oneDNN),
                  training, inference, and the train and predict stages' work (run.py)
    host.py       the process before JAX starts: CPU devices, memory, multi-process jobs
    devices.py    meshes and data parallelism
    predictions.py  the predictions-file contract: the seam between a classifier and the method
    pairs.py      (true class, k-th guess) pairs from predictions (topk.py: the jitted top-k;
                  novelty.py: new-or-known scores from each picture's whole output)
    embedding/    word2vec engines (gensim, the JAX skip-gram), the refits, the vector files
    evaluation/   similarity tables, scores, uncertainty, the report and the plots
    method.py     pairs -> vectors -> refits -> evaluation, as the stages and the API run it
    config/       every params section's knobs and defaults; the method stages' typed configs
    dvc_yaml.py   what the library reads of a dvc.yaml (the stages' paths)
    core/         shared plumbing: errors, params, class lists, atomic files, npz streaming,
                  entry points

Command-line tools, each also a console script (pyproject.toml), none imported by the rest:
study.py (a study of one's own predictions), compare.py (two tables against their noise),
experiments.py (`dvc exp show` in 80 columns).

The library never imports a stage. In Python, `embed_predictions` (api.py) goes from
predictions in memory to the table in one call, and every error a user can fix is a
`PipelineError` (a ValueError) with a one-line message; importing the package alone loads
nothing heavy (no JAX, CNN, gensim or DVC until a name is used).
"""

import importlib
from typing import Any

from confusion_embeddings.core.errors import PipelineError  # plain Python: nothing heavy

__all__ = ["embed_predictions", "Result", "Neighbour", "PipelineError"]
_API = ("embed_predictions", "Result", "Neighbour")


def __getattr__(name: str) -> Any:
    # Lazy: `import confusion_embeddings` stays cheap; the API loads on first use.
    if name in _API:
        return getattr(importlib.import_module("confusion_embeddings.api"), name)
    raise AttributeError(f"module 'confusion_embeddings' has no attribute {name!r}")
