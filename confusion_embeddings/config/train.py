"""params.yaml's `train:` section (the train stage: cnn/). Reads nothing.

The typed form is cnn/config.py's `TrainParams` (saved with each model inside its
`RunConfig`), built from this schema; its fields carry no default of their own.
"""

from __future__ import annotations

from confusion_embeddings.config.hosts import CPU_DEVICES
from confusion_embeddings.core.params import Param, above, at_least, in_range, int_list, one_of

IMPLS = ("auto", "onednn", "matmul", "xla")  # the convolution (cnn/conv.py): speed only
PRECISIONS = ("f32", "bf16")


def _class_names(v: list) -> str | None:
    """A list of distinct class names (strings), possibly empty."""
    ok = all(isinstance(x, str) and x for x in v) and len(set(v)) == len(v)
    return None if ok else "a list of distinct class names, e.g. [truck]"


SCHEMA = {
    # Every classifier above the accuracy floor at 0.045 PFLOP at most; 6 epochs fall under
    # it (docs/recipe.md). A fraction ends the run part-way through one more epoch
    # (cnn/training.py).
    "epochs": Param(float, 6.75, at_least(1)),
    "batch_size": Param(int, 512, at_least(1)),
    "lr": Param(float, 0.2, above(0)),  # peak learning rate, per mean loss over a batch
    "momentum": Param(float, 0.9, in_range(0.0, 0.999)),
    "nesterov": Param(bool, True),
    "weight_decay": Param(float, 5e-4, at_least(0.0)),  # conv and linear kernels only
    "warmup_fraction": Param(float, 0.2, in_range(0.0, 1.0)),
    # 0: smoothing erases the order of the 2nd and 3rd guesses, which the method reads.
    "label_smoothing": Param(float, 0.0, in_range(0.0, 0.999)),
    "translate": Param(int, 2, at_least(0)),
    "flip": Param(bool, True),
    "tta_flip": Param(bool, True),
    # 1: six views (the picture, its mirror and 1-pixel shifts of both), three times the
    # predict time of two; at 6.75 epochs two views left classifiers under the accuracy
    # floor (docs/recipe.md).
    "tta_translate": Param(int, 1, at_least(0)),
    "eval_batch_size": Param(int, 1000, at_least(1)),
    "stem_patch": Param(int, 2, at_least(1)),
    "stem_width": Param(int, 32, at_least(1)),
    "widths": Param(list, [64, 128, 256], int_list(1, what="positive ints")),
    # 0: train on every training picture; K >= 2: leave out fold seed mod K (cross-fitting).
    "crossfit_folds": Param(int, 0, lambda v: None if v == 0 or v >= 2 else "0 or an int >= 2"),
    "bn_momentum": Param(float, 0.6, in_range(0.0, 0.999)),
    # airbench's three initialisation and optimisation levers (docs/recipe.md measures each):
    # a frozen whitening of the stem's input patches (eigenvalues + whiten_eps), identity
    # (dirac) init of the convolutions, and batch-norm biases learning bias_lr_scale times
    # faster than the kernels.
    "whiten": Param(bool, True),
    "whiten_eps": Param(float, 5e-4, above(0)),
    "dirac": Param(bool, True),
    "bias_lr_scale": Param(float, 64.0, above(0)),
    "logit_scale": Param(float, 1 / 9, above(0)),
    # airbench's last two: every 5 steps the weights move to a slow average of themselves
    # (its weight rising to 0.95**5 by the end, which the model keeps), and a flip per
    # picture drawn once then inverted every other epoch instead of drawn every epoch.
    # Lookahead on: the slow average leaves less of the last steps' noise in the weights, so
    # classifiers of different seeds rank the class pairs more alike (docs/recipe.md).
    "lookahead": Param(bool, True),
    "alternate_flip": Param(bool, False),
    # sgd: every parameter under Nesterov SGD; muon: the convolution filters under airbench's
    # Muon instead (momentum muon_momentum, orthogonalised steps of muon_lr on filters kept
    # at a fixed norm, the same warm-up and decay), the rest under the SGD above.
    "optimizer": Param(str, "muon", one_of("sgd", "muon")),
    "muon_lr": Param(float, 0.12, above(0)),
    "muon_momentum": Param(float, 0.6, in_range(0.0, 0.999)),
    "conv_impl": Param(str, "auto", one_of(*IMPLS)),
    # bf16 where the CPU has it, f32 with a warning elsewhere (docs/design/bf16.md).
    "precision": Param(str, "bf16", one_of(*PRECISIONS)),
    "cpu_devices": CPU_DEVICES,
    # Classes whose pictures the classifier never trains on (names): it has C - k outputs,
    # predict still scores every picture, and the report places these classes (unseen.md).
    "unseen": Param(list, [], _class_names),
}
