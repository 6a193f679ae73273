"""The benchmarks' own measuring tools: a figure they print must be about what they name."""

from __future__ import annotations

import time

import numpy as np
import pytest

from benchmarks.pairs_many_classes import run_stage


def test_stage_peak_memory_is_the_stage_not_the_process_that_started_it():
    # On Linux a child's ru_maxrss includes its parent's resident size at fork; a benchmark
    # process holding PyTorch and JAX once made the pairs stage look 6x its size.
    ballast = np.ones(768 * 2**20 // 8)  # 768 MiB resident in this process
    started = time.perf_counter()
    seconds, rss_mib = run_stage("pairs", ["--help"])  # imports the stage, JAX and all
    assert ballast.sum() > 0
    assert 0 < seconds <= time.perf_counter() - started  # the child's wall time, in seconds
    assert 20 < rss_mib < 512, rss_mib


def test_dvc_runs_with_this_interpreters_environment_without_an_activated_venv(monkeypatch):
    # `.venv/bin/python -m benchmarks.run` with the venv not on PATH once failed at the
    # dvc step ("No such file or directory: 'dvc'"); the stages need this python too.
    from benchmarks.run import _dvc

    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    out = _dvc("--version").stdout.strip()
    assert out.split(".")[0].isdigit(), out


def test_ratio_is_taken_within_each_round_and_against_the_faster_layout():
    from benchmarks.run import pooled, ratio_over_rounds

    def r(x):
        return {"median": x, "min": x * 0.9, "max": x * 1.1}

    # A slow phase of the machine that hits PyTorch in round 3 only (as once happened to a
    # benchmark that measured each engine in one go) moves one ratio of three, not the
    # median; the faster of PyTorch's two layouts counts in each round.
    per_round = {
        "jax": [r(600), r(610), r(590)],
        "torch_a": [r(1200), r(900), r(590)],
        "torch_b": [r(1000), r(1220), r(500)],
    }
    ratio = ratio_over_rounds(per_round, "jax", ("torch_a", "torch_b"))
    assert ratio["rounds"] == [0.5, 0.5, 1.0] and ratio["median"] == 0.5
    fig = pooled(per_round["jax"])
    assert fig["median"] == 600 and fig["min"] == 590 * 0.9 and fig["max"] == 610 * 1.1


def test_recipe_study_finds_every_classifiers_predictions_in_a_lock():
    from method_studies.recipe_study import prediction_files

    single = {"data/prepared": "a", "data/predictions.npz": "b", "models/cnn": "c"}
    assert prediction_files(single) == {"predictions": "b"}
    several = {
        "data/predictions/seed_0.npz": "d",
        "data/predictions/seed_12.npz": "e",
        "data/pairs": "f",
        "reports/timings/predict/seed_0.json": "g",
    }
    assert prediction_files(several) == {"seed_0": "d", "seed_12": "e"}
    # A single-classifier entry left over in a later lock does not count beside them.
    assert prediction_files({**several, "data/predictions.npz": "b"}) == prediction_files(several)
    # A lock keeps predict@<s> entries of seeds the run no longer has: its params.yaml's
    # classifiers.seeds say which classifiers it pooled (recipe_study.run_predictions).
    used = {"data/predictions/seed_12.npz", "data/prepared"}
    assert prediction_files(several, used) == {"seed_12": "e"}
    with pytest.raises(SystemExit, match="no predictions file"):
        prediction_files({"data/pairs": "f"})


def test_agreement_spread_summarises_every_triple_of_the_pooled_tables():
    from method_studies.agreement_spread import spread

    rng = np.random.default_rng(0)
    base = rng.normal(size=(5, 5))
    base = base + base.T
    # Three classifiers that rank the class pairs alike and one that ranks them backwards:
    # the triple without it agrees fully (1), the three with it at (1 - 1 - 1) / 3.
    tables = np.stack([base, 2 * base, base + 1, -base])
    s = spread(tables, 3, threshold=0.98)
    assert s["subsets"] == 4 and s["max"] == 1.0 and s["min"] == round(-1 / 3, 4)
    assert s["mean"] == 0.0 and s["share_at_least_0.98"] == 0.25


@pytest.mark.parametrize("lookahead", [False, True])
def test_the_benchmarks_train_step_runs_the_recipe_it_is_given(lookahead):
    # make bench once failed at its first step when lookahead became a default: the step
    # it builds needs the run's length, as the train stage's does.
    from benchmarks.run import jax_train

    from cnn_helpers import tiny_run

    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8)
    labels = rng.integers(0, 4, 16).astype(np.int32)
    fig = jax_train(tiny_run(4, lookahead=lookahead), batch, labels, reps=1, augment=True)
    assert fig["median"] > 0
