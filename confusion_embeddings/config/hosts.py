"""params.yaml's `hosts:` section, and the `cpu_devices` knob train shares with it (host.py).
Reads nothing.

`hosts` is read by every stage that runs the network but is no DVC dependency of any stage:
it changes no result, only how long a multi-process job waits for a peer.
"""

from __future__ import annotations

from dataclasses import dataclass

from confusion_embeddings.config.section import Section, knob
from confusion_embeddings.core.params import Param, at_least, int_or_auto

# train.cpu_devices: the JAX devices the CPU is split into ("auto": one per core group).
CPU_DEVICES = Param((str, int), "auto", int_or_auto(1))


@dataclass(frozen=True)
class HostsConfig(Section):
    """Multi-process jobs (docs/hosts.md)."""

    SECTION = "hosts"

    # Seconds without a sign of life from a peer before a process stops.
    peer_timeout: int = knob(int, 60, at_least(5))


HOSTS = HostsConfig.schema()  # {key: Param}, as core/params.py validates a section
