"""What a process that runs the network does first, before JAX starts its backends."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from confusion_embeddings import devices
from confusion_embeddings.cnn import conv


def start(
    conv_impl: str,
    cpu_devices: int | str,
    batch_sizes: Sequence[int],
    precision: str = "f32",
    peer_timeout: int = devices.HOSTS["peer_timeout"].default,
) -> conv.ConvChoice:
    """Decide the convolution and precision (one warning line when either falls back), set
    up the host for it (memory reuse, CPU devices), join a multi-host job if launched as
    one (`peer_timeout`: params `hosts`), and keep compiled programs on disk. Returns the
    convolution that will run."""
    choice = conv.resolve(conv_impl, precision)
    if choice.warning:
        print(choice.warning, file=sys.stderr)
    devices.prepare_host(cpu_devices, batch_sizes, choice.impl)
    devices.init_distributed(peer_timeout)
    devices.enable_compilation_cache()
    return choice
