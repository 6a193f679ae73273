"""One classifier's training run, resolved: the train params, the seed, and what runs here.

Reads and writes nothing itself; cnn/checkpoint.py saves a `RunConfig` with the model as
`config.json` and loads it back, so predict runs the network as train ran it. The train
params' defaults live in SCHEMA alone; `TrainParams` names them, with no default of its own.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from confusion_embeddings import host
from confusion_embeddings.cnn.conv import IMPLS, PRECISIONS, ConvChoice
from confusion_embeddings.cnn.network import ModelConfig
from confusion_embeddings.core.errors import PipelineError
from confusion_embeddings.core.params import Param, above, at_least, in_range, int_list, one_of

# numpy's default_rng refuses negative seeds and jax.random.key takes at most 64 bits.
SEED_RANGE = (0, 2**32 - 1)


def _class_names(v: list) -> str | None:
    """A list of distinct class names (strings), possibly empty."""
    ok = all(isinstance(x, str) and x for x in v) and len(set(v)) == len(v)
    return None if ok else "a list of distinct class names, e.g. [truck]"


SCHEMA = {
    # The fewest epochs that keep every classifier above the accuracy floor (docs/recipe.md).
    "epochs": Param(int, 12, at_least(1)),
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
    "conv_impl": Param(str, "auto", one_of(*IMPLS)),
    # bf16 where the CPU has it, f32 with a warning elsewhere (docs/design/bf16.md).
    "precision": Param(str, "bf16", one_of(*PRECISIONS)),
    "cpu_devices": host.CPU_DEVICES,
    # Classes whose pictures the classifier never trains on (names): it has C - k outputs,
    # predict still scores every picture, and the report places these classes (unseen.md).
    "unseen": Param(list, [], _class_names),
}


def check_seed(seed: int) -> None:
    if not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        raise PipelineError(
            f"params.yaml: 'classifiers.seeds' holds {seed}; seeds must be in "
            f"[{SEED_RANGE[0]}, {SEED_RANGE[1]}]"
        )


@dataclass(frozen=True)
class TrainParams:
    """params.yaml's `train:` section, validated against SCHEMA (which holds the defaults
    and the reasons); conv_impl and precision as asked for, before resolution."""

    epochs: int
    batch_size: int
    lr: float
    momentum: float
    nesterov: bool
    weight_decay: float
    warmup_fraction: float
    label_smoothing: float
    translate: int
    flip: bool
    tta_flip: bool
    tta_translate: int
    eval_batch_size: int
    stem_patch: int
    stem_width: int
    widths: tuple[int, ...]
    crossfit_folds: int
    bn_momentum: float
    whiten: bool
    whiten_eps: float
    dirac: bool
    bias_lr_scale: float
    logit_scale: float
    conv_impl: str
    precision: str
    cpu_devices: int | str
    unseen: tuple[str, ...]

    @classmethod
    def from_dict(cls, p: dict[str, Any]) -> TrainParams:
        # A model trained on every class is saved without `unseen` (see to_dict).
        return cls(**{**p, "widths": tuple(p["widths"]), "unseen": tuple(p.get("unseen", ()))})

    def to_dict(self) -> dict[str, Any]:
        d = {**asdict(self), "widths": list(self.widths), "unseen": list(self.unseen)}
        if not self.unseen:  # saved as before the key existed: the same model, the same bytes
            del d["unseen"]
        return d


@dataclass(frozen=True)
class Holdout:
    """Under cross-fitting (train.crossfit_folds = K >= 2), the training fold a classifier
    never sees: fold `seed mod K`. Predict scores exactly these training pictures."""

    folds: int
    fold: int


@dataclass(frozen=True)
class RunConfig:
    """Everything one classifier's run is: built once (`resolve`), passed whole, saved with
    the model as config.json and loaded back (`from_dict`)."""

    seed: int
    num_classes: int  # the classes it is trained on: the dataset's, less train.unseen
    train: TrainParams
    conv_impl: str  # resolved (cnn/conv.py): "onednn", "matmul" or "xla", never "auto"
    precision: str  # resolved: "f32" or "bf16", the precision that runs

    @classmethod
    def resolve(
        cls, params: dict[str, Any], seed: int, num_classes: int, choice: ConvChoice
    ) -> RunConfig:
        """The run of `seed` under the validated train `params`, with the convolution and
        precision `choice` resolved for this machine."""
        return cls(seed, num_classes, TrainParams.from_dict(params), choice.impl, choice.precision)

    def __post_init__(self) -> None:
        check_seed(self.seed)
        if self.train.unseen and self.train.crossfit_folds:
            # The folds are dealt per class over all classes; predict could not tell which
            # of an unseen-class run's training pictures it left out.
            raise PipelineError(
                "params.yaml: 'train.unseen' and 'train.crossfit_folds' >= 2 cannot be "
                "combined; set one of them back to its default ([] or 0)"
            )

    @property
    def model(self) -> ModelConfig:
        """The network's shape and the convolution it runs."""
        t = self.train
        return ModelConfig(
            num_classes=self.num_classes,
            stem_width=t.stem_width,
            widths=t.widths,
            stem_patch=t.stem_patch,
            bn_momentum=t.bn_momentum,
            logit_scale=t.logit_scale,
            whiten=t.whiten,
            dirac=t.dirac,
            conv_impl=self.conv_impl,
            precision=self.precision,
        )

    @property
    def holdout(self) -> Holdout | None:
        """The training fold this classifier leaves out under cross-fitting, or None."""
        k = self.train.crossfit_folds
        return Holdout(k, self.seed % k) if k else None

    def running(self, choice: ConvChoice) -> RunConfig:
        """This run with another convolution and precision (a saved model run elsewhere)."""
        return replace(self, conv_impl=choice.impl, precision=choice.precision)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "train": self.train.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """The inverse of `to_dict`; KeyError or TypeError where `d` is not one."""
        names = {f.name for f in fields(cls)}
        if set(d) != names:
            raise KeyError(f"expected the keys {sorted(names)}, got {sorted(d)}")
        return cls(**{**d, "train": TrainParams.from_dict(d["train"])})
