"""Pytest setup shared by every test module.

JAX starts its backends here, once, with the devices the environment gives (one CPU device
unless XLA_FLAGS says otherwise). A stage's `main()` called in-process then keeps them:
without this, the first such call would split the CPU into one device per core
(`confusion_embeddings.host.use_cpu_devices`) for the rest of the session, and what a
test sees would depend on which test ran first. Stages run as subprocesses (the dvc CLI
tests) still split the CPU as they do for users.
"""

import jax

jax.devices()
