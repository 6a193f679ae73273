"""confusion_embeddings/cnn/inference.py: test-time augmentation (flips and shifted views)."""

from __future__ import annotations

import numpy as np
from flax import nnx

from confusion_embeddings.cnn.inference import make_inference_fn
from confusion_embeddings.cnn.network import CNN

from cnn_helpers import tiny_run


def _tiny_model(num_classes: int = 4):
    cfg = tiny_run(num_classes, stem_patch=2).model
    return nnx.split(CNN(cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)


def test_tta_translate_averages_the_shifted_views_with_airbench_weights():
    graphdef, params, rest = _tiny_model()
    norm = (np.zeros(3, np.float32), np.ones(3, np.float32))
    imgs = np.random.default_rng(0).integers(0, 255, (3, 16, 16, 3)).astype(np.uint8)
    plain = make_inference_fn(graphdef, norm)
    tta = make_inference_fn(graphdef, norm, tta_translate=1)(params, rest, imgs)
    # The same views built by hand with numpy: shifted by one pixel down-right and up-left.
    padded = np.pad(imgs, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    want = (
        0.5 * plain(params, rest, imgs)
        + 0.25 * plain(params, rest, padded[:, :16, :16])
        + 0.25 * plain(params, rest, padded[:, 2:, 2:])
    )
    np.testing.assert_allclose(tta, want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(tta, plain(params, rest, imgs), atol=1e-4)  # the views differ
    # With flips on, each of the three views is averaged with its mirror image.
    both = make_inference_fn(graphdef, norm, tta_flip=True, tta_translate=1)

    def mirror(v):
        return 0.5 * (plain(params, rest, v) + plain(params, rest, v[:, :, ::-1]))

    want = (
        0.5 * mirror(imgs) + 0.25 * mirror(padded[:, :16, :16]) + 0.25 * mirror(padded[:, 2:, 2:])
    )
    np.testing.assert_allclose(both(params, rest, imgs), want, rtol=1e-5, atol=1e-6)


def test_tta_leaves_a_uniform_picture_alone():
    graphdef, params, rest = _tiny_model()
    norm = (np.zeros(3, np.float32), np.ones(3, np.float32))
    imgs = np.full((2, 16, 16, 3), 77, np.uint8)  # every flip and shift gives it back
    plain = make_inference_fn(graphdef, norm)(params, rest, imgs)
    tta = make_inference_fn(graphdef, norm, tta_flip=True, tta_translate=2)(params, rest, imgs)
    np.testing.assert_allclose(tta, plain, rtol=1e-5, atol=1e-6)
