"""The evaluate stage's warnings: when a table must not be read as it stands, and what to do.

Reads and writes nothing. Each function returns the lines of one kind of warning (empty or
None when it does not fire); every line names the figure, the threshold param, and the
remedy.
"""

from __future__ import annotations

from confusion_embeddings.config.evaluate import EvaluateConfig


def collapse_reasons(
    spearman: float | None, offdiag: float, config: EvaluateConfig
) -> tuple[str, ...]:
    """Which collapse criteria fire, each as a line for the warning and the report."""
    reasons = []
    if offdiag > config.collapse_mean_cosine:
        reasons.append(
            f"mean off-diagonal cosine {offdiag:.4f} > evaluate.collapse_mean_cosine "
            f"{config.collapse_mean_cosine}: the classes point in nearly one direction; usual "
            "cause: too many updates for a small vocabulary on pairs sorted by class "
            "(embed.shuffle false with embed.sample 0, or many more epochs), see "
            "docs/design/embedding-engines.md"
        )
    if spearman is not None and spearman < config.collapse_threshold:
        reasons.append(
            f"Spearman vs confusion {spearman:.4f} < evaluate.collapse_threshold "
            f"{config.collapse_threshold}: the similarities do not rank class pairs as the "
            "confusions do (with many classes, where most pairs' confusion rates are noise, "
            "check the group scores too)"
        )
    return tuple(reasons)


def noise_reasons(
    reliability: float | None,
    updates: float | None,
    engine: str,
    config: EvaluateConfig,
    table_reliability: float | None = None,
) -> tuple[str, ...]:
    """Which noise criteria fire, each as a line for the warning and the report."""
    reasons = []
    if table_reliability is not None and table_reliability < config.min_table_reliability:
        reasons.append(
            f"the table's reliability under resampling of the pictures is "
            f"{table_reliability:.2f} < evaluate.min_table_reliability "
            f"{config.min_table_reliability}: "
            "too few pictures for the differences it ranks (two redraws of them rank the class "
            "pairs differently); add pictures, and read only the largest similarities"
        )
    if reliability is not None and reliability < config.min_seed_reliability:
        reasons.append(
            f"the table's split-half reliability over word2vec seeds is {reliability:.2f} < "
            f"evaluate.min_seed_reliability {config.min_seed_reliability}: the seed-to-seed spread "
            "is large against the differences it ranks; "
            + (
                "use embed.engine: jax, or more pictures"
                if engine == "gensim"
                else "use more pictures, or more embed.seeds"
            )
        )
    if updates is not None and updates < config.min_updates_per_class:
        reasons.append(
            f"only {updates:.0f} pairs per class and epoch reach the {engine} engine "
            f"(< evaluate.min_updates_per_class {config.min_updates_per_class:g}): too "
            "few for it; "
            + (
                "use embed.engine: jax (it trains on every pair), or embed.sample: 0"
                if engine == "gensim"
                else "use more pictures"
            )
        )
    return tuple(reasons)


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, ..., 11th, 12th, 13th, ..., 21st, 22nd, 101st, 111th."""
    suffix = "th" if n % 100 in (11, 12, 13) else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def lower_guesses(top_k: int) -> str:
    """The guesses below the first: "the 2nd guesses", "the 2nd to 3rd guesses"."""
    return "the 2nd guesses" if top_k == 2 else f"the 2nd to {ordinal(top_k)} guesses"


def flat_guesses_reason(secondary: float | None, top_k: int, config: EvaluateConfig) -> str | None:
    """The warning that the 2nd..k-th guesses carry no class structure, or None."""
    if secondary is None or top_k < 2 or secondary >= config.min_secondary:
        return None
    return (
        f"no structure in the lower guesses: {lower_guesses(top_k)} rank the class "
        f"pairs like the top-1 mistakes at Spearman {secondary:.2f} < evaluate.min_secondary "
        f"{config.min_secondary} (label smoothing, over-confident or non-probabilistic "
        "scores flatten them), so the table rests on the top-1 mistakes alone; use "
        "pairs.top_k: 1, or calibrated probabilities"
    )


def unstable_ranks_reason(nearest: list[tuple[str, str, float]]) -> str:
    """The warning for classes whose nearest class holds in too few redraws of the pictures:
    (class, its nearest class, share of redraws keeping it), the first ten shown."""
    shown = ", ".join(f"{a} -> {b} ({share:.0%})" for a, b, share in nearest[:10])
    return (
        f"unstable ranks: the nearest class holds in too few redraws of the pictures for "
        f"{shown}; read those classes' neighbours as a group, not an order (more "
        "pictures of them narrow it)"
    )
