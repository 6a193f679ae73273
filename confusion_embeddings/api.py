"""Use it from Python: one call from a model's predictions to the trusted table.

    import confusion_embeddings as ce
    result = ce.embed_predictions(labels, classes, probs=probs)
    result.table          # [C, C] cosine similarities; result.low / result.high: intervals
    result.nearest("cat") # [Neighbour(neighbour, cosine, low, high), ...], most similar first
    result.to_frame()     # class, neighbour, cosine, low, high, rank interval (pandas)
    print(result.report())  # the markdown report the evaluate stage writes
    result.plot()         # the heatmap, a matplotlib Figure
    result.save("out")    # the files the pairs, embed, resample and evaluate stages write

It runs the same functions as the pairs, embed, resample and evaluate stages (method.py),
with the same params (keyword arguments named as in params.yaml's pairs, embed, resample and
evaluate sections, defaults from the same configs, config/), the same checks and the same
one-line errors (PipelineError, a ValueError; a bad keyword argument is named as one:
"embed_predictions(dim=0) is out of range ..."). It writes nothing unless `save` is called.
Several classifiers of the same pictures: give lists (`probs=[p0, p1, p2]`, and one
`labels` or a list of them). A model trained without some classes: name them in `unseen`,
and give its C - u columns as they are (or C columns, the unseen ones 0).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from confusion_embeddings.config.embed import EmbedConfig
from confusion_embeddings.config.evaluate import EvaluateConfig
from confusion_embeddings.config.pairs import PairsConfig
from confusion_embeddings.config.resample import ResampleConfig
from confusion_embeddings.core.errors import PipelineError
from confusion_embeddings.core.files import atomic_dir, write_json
from confusion_embeddings.core.params import params_given_to
from confusion_embeddings.dvc_yaml import project_dvc_yaml, stage_command
from confusion_embeddings.embedding.engines import Embedding, embed
from confusion_embeddings.embedding.resampling import resample
from confusion_embeddings.embedding.store import Replicates, write_embedding, write_replicates
from confusion_embeddings.evaluation.groups import resolve_groups
from confusion_embeddings.evaluation.report import metrics_dict, render_report
from confusion_embeddings.evaluation.scores import Evaluation
from confusion_embeddings.evaluation.uncertainty import ranked_neighbours
from confusion_embeddings.evaluation.unseen import read_reference
from confusion_embeddings.method import EvaluateOutputs, evaluate, write_evaluation
from confusion_embeddings.pairs import Pairs, make_pairs, pairs_metrics, write_pairs
from confusion_embeddings.predictions import predictions_from_arrays


@dataclass(frozen=True)
class Configs:
    """The four stages' configs one call runs with (config/)."""

    pairs: PairsConfig
    embed: EmbedConfig
    resample: ResampleConfig
    evaluate: EvaluateConfig


SECTIONS = {f.name: f.type for f in fields(Configs)}
CONFIGS = (PairsConfig, EmbedConfig, ResampleConfig, EvaluateConfig)


def split_params(given: dict[str, Any]) -> Configs:
    """Keyword arguments -> the four stages' configs, validated as params.yaml would be
    (a key of no section gets the params' "did you mean" message)."""
    owner = {key: config for config in CONFIGS for key in config.schema()}
    owner.pop("predictions", None)  # a file path: the API takes arrays instead
    sections: dict[str, dict[str, Any]] = {config.SECTION: {} for config in CONFIGS}
    for key, value in given.items():
        if key not in owner:
            close = difflib.get_close_matches(key, list(owner), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise PipelineError(
                f"embed_predictions: unknown parameter '{key}'{hint} (any key of params.yaml's "
                "pairs, embed, resample or evaluate section)"
            )
        sections[owner[key].SECTION][key] = value
    return Configs(*(config.from_params(sections[config.SECTION]) for config in CONFIGS))


def saved_paths() -> dict[str, Path]:
    """Where `save` puts each output: the paths the project's dvc.yaml gives the stages,
    keyed "<stage> <option>" (e.g. "evaluate --report")."""
    dvc_yaml = project_dvc_yaml()
    return {
        f"{stage} {option}": Path(value)
        for stage in ("pairs", "embed", "resample", "evaluate")
        for option, value in stage_command(dvc_yaml, stage).options.items()
    }


class Neighbour(NamedTuple):
    """One of a class's nearest classes (`Result.nearest`): its cosine similarity and that
    similarity's bootstrap interval, plain Python floats (NaN without resampling)."""

    neighbour: str
    cosine: float
    low: float
    high: float

    def __repr__(self) -> str:  # 4 decimals to read; the fields keep every digit
        return (
            f"Neighbour({self.neighbour!r}, cosine={self.cosine:.4f}, low={self.low:.4f}, "
            f"high={self.high:.4f})"
        )


def _per_classifier(x: Any, ndim: int) -> list:
    """A list of one array per classifier: `x` itself, or its items when it is a list or
    tuple of arrays of `ndim` dimensions (a nested list of numbers is one array)."""
    if isinstance(x, (list, tuple)) and x and np.ndim(x[0]) == ndim:
        return list(x)
    return [x]


@dataclass(frozen=True)
class Result:
    """The table and everything known about how far to trust it."""

    evaluation: Evaluation
    pairs: Pairs = field(repr=False)
    embedding: Embedding = field(repr=False)
    replicates: Replicates = field(repr=False)
    configs: Configs = field(repr=False)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.evaluation.classes

    @property
    def table(self) -> np.ndarray:
        """[C, C] cosine similarity, the mean over the classifiers."""
        return self.evaluation.mean

    @property
    def low(self) -> np.ndarray:
        """[C, C] lower end of each similarity's bootstrap interval."""
        return self.evaluation.uncertainty.low

    @property
    def high(self) -> np.ndarray:
        return self.evaluation.uncertainty.high

    @property
    def vectors(self) -> np.ndarray:
        """The consensus class vectors [C, dim] (one classifier: its own vectors)."""
        return self.evaluation.consensus.vectors

    @property
    def runs(self) -> np.ndarray:
        """Every classifier's vectors [M, R, C, dim] (R: runs per classifier)."""
        return self.embedding.vectors

    @property
    def metrics(self) -> dict[str, Any]:
        """The headline figures of metrics/similarity.json, table_reliability first."""
        return metrics_dict(self.evaluation)

    @property
    def warnings(self) -> tuple[str, ...]:
        return self.evaluation.warnings

    def nearest(self, name: str, n: int = 3) -> list[Neighbour]:
        """A class's n nearest classes, most similar first: (neighbour, cosine, low, high)."""
        if name not in self.classes:
            raise PipelineError(f"{name!r} is not a class (classes: {', '.join(self.classes)})")
        i = self.classes.index(name)
        return [
            Neighbour(
                self.classes[j],
                float(self.table[i, j]),
                float(self.low[i, j]),
                float(self.high[i, j]),
            )
            for j in ranked_neighbours(self.table, i)[:n]
        ]

    def to_frame(self):
        """A long table (pandas DataFrame): class, neighbour, cosine, low, high, rank_low,
        rank_high; the rows of reports/similarity.csv."""
        import pandas as pd

        from confusion_embeddings.evaluation.plots import SIMILARITY_COLUMNS, similarity_rows

        rows = similarity_rows(self.evaluation)
        return pd.DataFrame(rows, columns=SIMILARITY_COLUMNS).replace("", np.nan)

    def report(self) -> str:
        """The markdown report the evaluate stage writes."""
        return render_report(self.evaluation, self.configs.evaluate)

    def plot(self):
        """The similarity heatmap as a matplotlib Figure."""
        from confusion_embeddings.evaluation.plots import heatmap

        return heatmap(self.evaluation, self.configs.evaluate)

    def save(self, folder: str | Path) -> Path:
        """Write what the pairs, embed, resample and evaluate stages write, under the paths
        the project's dvc.yaml gives them, into `folder`; returns it."""
        folder = Path(folder)
        at = {key: folder / path for key, path in saved_paths().items()}
        with atomic_dir(at["pairs --out"]) as tmp:
            write_pairs(self.pairs, tmp)
        write_json(at["pairs --metrics"], pairs_metrics(self.pairs))
        with atomic_dir(at["embed --out"]) as tmp:
            write_embedding(tmp, self.embedding)
        with atomic_dir(at["resample --out"]) as tmp:
            write_replicates(tmp, self.replicates)
        outputs = {f.name: at[f"evaluate --{f.name}"] for f in fields(EvaluateOutputs)}
        write_evaluation(self.evaluation, self.configs.evaluate, EvaluateOutputs(**outputs))
        return folder


def embed_predictions(
    labels: np.ndarray | Sequence[np.ndarray],
    classes: Sequence[str],
    *,
    probs: np.ndarray | Sequence[np.ndarray] | None = None,
    logits: np.ndarray | Sequence[np.ndarray] | None = None,
    topk: np.ndarray | Sequence[np.ndarray] | None = None,
    groups: dict[str, list[str]] | None = None,
    unseen: Sequence[str] = (),
    split: Sequence[str] | np.ndarray | Sequence[np.ndarray] | None = None,
    reference: str | Path | None = None,
    **params: Any,
) -> Result:
    """Predictions in memory -> the similarity table with its intervals (module docstring).

    labels [N] true class indices into `classes`; exactly one of probs [N, C], logits
    [N, C] or topk [N, k]; for several classifiers a list of score arrays (and one labels
    array or a list). `unseen`: classes the classifier was never trained on (never a guess;
    the report places them, evaluation/unseen.py), their rows compared with the similarity
    table CSV `reference` if given; probs/logits may then be [N, C - u], the known classes'
    columns in the order of `classes` without the unseen ones (predictions.py). `split`:
    each picture's split name, e.g. "train" or "test" (one array, or one per classifier):
    the new-or-known scores are fitted on the known classes' "train" pictures and measured
    on the "test" ones (novelty.py). `params`:
    any key of params.yaml's pairs, embed, resample or evaluate section, e.g. top_k=1,
    dim=10, bootstrap=500; a bad one raises PipelineError naming the keyword argument."""
    with params_given_to("embed_predictions"):  # a bad value names its keyword argument
        configs = split_params(params)
        predictions = _predictions(labels, classes, probs, logits, topk, groups, unseen, split)
        pairs = make_pairs(predictions, configs.pairs)
        # The groups are checked before the refits, which take the longest.
        resolve_groups(configs.evaluate.groups, pairs.groups, pairs.classes)
        embedding = embed(pairs, configs.embed)
        replicates = resample(pairs, embedding, configs.resample)
        ref = (str(reference), read_reference(reference)) if reference is not None else None
        ev = evaluate(pairs, embedding, replicates, configs.evaluate, reference=ref)
    return Result(ev, pairs, embedding, replicates, configs)


def _predictions(labels, classes, probs, logits, topk, groups, unseen, split=None) -> list:
    """(name, Predictions) per classifier, each checked against the predictions contract."""
    given = {"probs": probs, "logits": logits, "topk": topk}
    scores = {k: _per_classifier(v, 2) for k, v in given.items() if v is not None}
    label_list = _per_classifier(labels, 1)
    splits = _per_classifier(split, 1) if split is not None else [None]
    m = max([len(label_list), *(len(v) for v in scores.values())])
    for key, v in {"labels": label_list, **scores}.items():
        if len(v) not in (1, m):
            raise PipelineError(
                f"embed_predictions: '{key}' holds {len(v)} classifiers' arrays where another "
                f"holds {m}; give one array per classifier, or one shared by all"
            )
    predictions = []
    for i in range(m):
        name = "predictions" if m == 1 else f"predictions[{i}]"
        arrays = {
            "labels": label_list[i if len(label_list) > 1 else 0],
            "classes": np.asarray(classes, dtype=str),
            "groups": groups,
            "unseen": np.asarray(list(unseen), dtype=str) if unseen else None,
            **_split_arrays(splits[i if len(splits) > 1 else 0]),
            **{k: v[i if len(v) > 1 else 0] for k, v in scores.items()},
        }
        predictions.append((name, predictions_from_arrays(arrays, name)))
    return predictions


def _split_arrays(names: Sequence[str] | np.ndarray | None) -> dict[str, np.ndarray]:
    """A picture's split names -> the contract's `split` (int8 indices) and `splits`."""
    if names is None:
        return {}
    listed = np.asarray(names, dtype=str).tolist()
    index = {name: i for i, name in enumerate(dict.fromkeys(listed))}  # first appearance
    return {
        "split": np.array([index[name] for name in listed], np.int8),
        "splits": np.array(list(index), dtype=str),
    }
