"""One classifier's training run, resolved: the train params, the seed, and what runs here.

Reads and writes nothing itself; cnn/checkpoint.py saves a `RunConfig` with the model as
`config.json` and loads it back, so predict runs the network as train ran it. The train
params' defaults live in config/train.py's SCHEMA alone; `TrainParams` names them, with no
default of its own.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from confusion_embeddings.cnn.conv import ConvChoice
from confusion_embeddings.cnn.network import ModelConfig
from confusion_embeddings.core.errors import PipelineError

# numpy's default_rng refuses negative seeds and jax.random.key takes at most 64 bits.
SEED_RANGE = (0, 2**32 - 1)


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

    epochs: float  # an int in params.yaml unless a fraction of an epoch is asked for
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
    lookahead: bool
    alternate_flip: bool
    optimizer: str
    muon_lr: float
    muon_momentum: float

    @classmethod
    def from_dict(cls, p: dict[str, Any]) -> TrainParams:
        # A key added after models were saved is absent from them when at its neutral value.
        p = {**_SAVED_ONLY_IF_SET, **p}
        return cls(**{**p, "widths": tuple(p["widths"]), "unseen": tuple(p["unseen"])})

    def to_dict(self) -> dict[str, Any]:
        d = {**asdict(self), "widths": list(self.widths), "unseen": list(self.unseen)}
        # Saved as before these keys existed where they change nothing: the same model, the
        # same bytes (a model's folder is a DVC output: new bytes would invalidate predict).
        for key, neutral in _SAVED_ONLY_IF_SET.items():
            if d[key] == neutral:
                del d[key]
        return d


# TrainParams fields a saved model holds only when they differ from these values.
_SAVED_ONLY_IF_SET: dict[str, Any] = {
    "unseen": [],
    "lookahead": False,
    "alternate_flip": False,
    "optimizer": "sgd",
    "muon_lr": 0.12,
    "muon_momentum": 0.6,
}


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
        if self.train.alternate_flip and not self.train.flip:
            raise PipelineError(
                "params.yaml: 'train.alternate_flip' orders the flips that 'train.flip' "
                "turns on; set train.flip: true, or alternate_flip: false"
            )
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
