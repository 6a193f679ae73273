"""confusion_embeddings/devices.py: the data mesh, and the train stage split over several
devices agreeing with one."""

from __future__ import annotations

import subprocess

import jax
import pytest

from confusion_embeddings import devices

from cnn_helpers import (
    device_count,
    train_cmd,
    train_env,
    train_metrics,
    train_project,
)


def test_data_mesh_over_the_first_devices():
    assert devices.data_mesh().devices.size == jax.device_count()
    assert devices.data_mesh(1).devices.tolist() == [jax.devices()[0]]


@pytest.mark.slow
def test_two_fake_devices_agree_with_one(tmp_path):
    # In f32: what is checked is the sharding, and on a bf16 CPU the default precision's
    # rounding of the differently ordered sums alone moves the loss by up to ~0.4% in 4 steps.
    train_project(tmp_path, train=32, test=8, precision="f32")
    for n in (1, 2):
        subprocess.run(
            train_cmd(f"d{n}"),
            cwd=tmp_path,
            env=train_env(n, tmp_path),
            check=True,
            capture_output=True,
        )
    one, two = train_metrics(tmp_path, "d1"), train_metrics(tmp_path, "d2")
    # XLA_FLAGS is obeyed
    assert device_count(tmp_path, "d1") == 1 and device_count(tmp_path, "d2") == 2
    # The sharded batch sums in a different order: equal up to float rounding.
    assert one["test_accuracy"] == pytest.approx(two["test_accuracy"], abs=1 / 32)
    assert one["train_loss"] == pytest.approx(two["train_loss"], rel=1e-3)
