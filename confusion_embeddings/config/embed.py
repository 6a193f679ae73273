"""params.yaml's `embed:` section (the embed stage, and the resample stage's refits, which
use the settings the class vectors were made with). Reads nothing."""

from __future__ import annotations

from dataclasses import dataclass

from confusion_embeddings.config.section import Section, knob
from confusion_embeddings.core.params import above, at_least, int_list, one_of

ENGINES = ("gensim", "jax")
OBJECTIVES = ("softmax", "negative")  # engine jax's loss (embedding/skipgram.py)


@dataclass(frozen=True)
class EmbedConfig(Section):
    """word2vec skip-gram on the pairs, per classifier (embedding/engines.py)."""

    SECTION = "embed"

    # jax by default: it holds from a few hundred pictures up, where gensim's down-sampling
    # starves or collapses (docs/design/embedding-engines.md); gensim is the paper's engine.
    engine: str = knob(str, "jax", one_of(*ENGINES))
    dim: int = knob(int, 5, at_least(1))  # 5 dimensions for 10 classes, as in the paper
    # One fit per seed. Engine jax: restarts of a deterministic fit, of which the lowest-loss
    # one is kept (the fit is the same for every seed once converged, so averaging would add
    # nothing); engine gensim: runs that do differ, whose tables are averaged.
    seeds: list[int] = knob(list, list(range(10)), int_list(0, distinct=True))
    # engine gensim only: Word2Vec's own knobs (embedding/gensim_w2v.py)
    window: int = knob(int, 1, at_least(1))
    # hs=0, so negative sampling is the only training objective: 0 would train nothing.
    negative: int = knob(int, 5, at_least(1))
    epochs: int = knob(int, 5, at_least(1))
    sample: float = knob(float, 1e-3, at_least(0))
    alpha: float = knob(float, 0.025, above(0))
    min_alpha: float = knob(float, 0.0001, at_least(0))
    shuffle: bool = knob(bool, True)
    # engine jax only (embedding/skipgram.py)
    jax_steps: int = knob(int, 4000, at_least(1))
    jax_lr: float = knob(float, 0.05, above(0))
    # 0 would leave the cosine table undefined (skipgram.py): strictly positive.
    jax_l2: float = knob(float, 0.01, above(0))
    jax_objective: str = knob(str, "softmax", one_of(*OBJECTIVES))
    jax_negative: int = knob(int, 5, at_least(1))
    jax_init_std: float = knob(float, 0.1, above(0))


SCHEMA = EmbedConfig.schema()  # {key: Param}, as core/params.py validates a section
