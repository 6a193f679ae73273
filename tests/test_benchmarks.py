"""The benchmarks' own measuring tools: a figure they print must be about what they name."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the benchmarks/ package

from benchmarks.pairs_many_classes import run_stage  # noqa: E402


def test_stage_peak_memory_is_the_stage_not_the_process_that_started_it():
    # On Linux a child's ru_maxrss includes its parent's resident size at fork; a benchmark
    # process holding PyTorch and JAX once made the pairs stage look 6x its size.
    ballast = np.ones(768 * 2**20 // 8)  # 768 MiB resident in this process
    seconds, rss_mib = run_stage("pairs", ["--help"])  # imports the stage, JAX and all
    assert ballast.sum() > 0
    assert seconds > 0
    assert 20 < rss_mib < 512, rss_mib
