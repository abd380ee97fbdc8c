"""What a loaded TF-Hub module offers, behind one call: a TF2 reusable SavedModel or a TF1 Hub
format module.

``hub.load`` gives a TF2 reusable SavedModel as a callable ``(images, training)`` with
``variables`` and ``trainable_variables``; a TF1 Hub format module (tfhub.dev feature vectors
versions 1-3) as an object with ``signatures`` only, each a function over the module's variables
built from its inference graph. Both are gradient-reachable, so tfft trains either; a TF1
signature has no training mode, so its BatchNorm layers always run on their moving statistics.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import tensorflow as tf

from tfft import fs
from tfft.errors import UserError

# TF1 Hub format signatures of an image feature vector, in order of preference.
TF1_SIGNATURES = ("image_feature_vector", "default")
TF1_OUTPUT = "default"
TF2_FORM = "TF2 SavedModel"


@dataclass(frozen=True)
class HubModule:
    """A loaded module as one function of float images in [0, 1] and its variables."""

    owner: object  # what hub.load returned; it owns the variables and must stay alive
    call: Callable[[tf.Tensor, bool], tf.Tensor]  # (images, batchnorm_training) -> outputs
    variables: tuple[tf.Variable, ...]
    trainable_ids: frozenset[int]
    form: str  # "TF2 SavedModel" or "TF1 Hub format, signature 'NAME'"
    input_size: int | None = None  # the square size a TF1 signature is fixed to, if any


def load_module(handle: str) -> HubModule:
    """``hub.load(handle)`` as a HubModule; one line when it is neither form."""
    import tensorflow_hub as hub

    is_url = handle.startswith(("http://", "https://"))
    if not is_url and not fs.isdir(handle):
        raise UserError(f"--hub_handle: expected a TF-Hub URL or a SavedModel directory; "
                        f"received {handle!r} (no such directory).")
    try:
        loaded = hub.load(handle)
    except Exception as err:  # noqa: BLE001 - URLError, OSError, parse errors
        hint = " (offline? download it where you have network and pass --hub_handle=/local/dir)"
        raise UserError(f"--hub_handle: could not load {handle!r}"
                        f"{hint if is_url else ''}: {str(err).splitlines()[0][:200]}") from None
    module = _tf2_module(loaded) or _tf1_module(loaded)
    if module is None:
        raise UserError(f"--hub_handle: {handle!r} is not a TF-Hub image feature vector: it "
                        "offers neither a callable with variables (TF2 reusable SavedModel) nor "
                        f"a signature {' or '.join(TF1_SIGNATURES)} (TF1 Hub format); it offers "
                        f"{_offers(loaded)}.")
    return module


def _tf2_module(loaded: object) -> HubModule | None:
    if not callable(loaded) or not getattr(loaded, "variables", None):
        return None
    trainable = frozenset(id(v) for v in getattr(loaded, "trainable_variables", ()))

    def call(images: tf.Tensor, batchnorm_training: bool) -> tf.Tensor:
        return loaded(images, training=batchnorm_training)

    return HubModule(loaded, call, tuple(loaded.variables), trainable, TF2_FORM)


def _tf1_module(loaded: object) -> HubModule | None:
    """The first image-feature-vector signature that takes one image batch and has variables."""
    signatures = getattr(loaded, "signatures", None) or {}
    for name in TF1_SIGNATURES:
        fn = signatures.get(name)
        inputs = fn.structured_input_signature[1] if fn is not None else {}
        if len(inputs) != 1 or not fn.variables or TF1_OUTPUT not in fn.structured_outputs:
            continue
        (key, spec), = inputs.items()
        if spec.shape.rank != 4 or spec.shape[-1] != 3:
            continue

        def call(images: tf.Tensor, _batchnorm_training: bool, fn=fn, key=key) -> tf.Tensor:
            return fn(**{key: images})[TF1_OUTPUT]

        rows, cols = spec.shape[1], spec.shape[2]
        return HubModule(loaded, call, tuple(fn.variables),
                         frozenset(id(v) for v in fn.variables if v.trainable),
                         f"TF1 Hub format, signature {name!r}", rows if rows == cols else None)
    return None


def _offers(loaded: object) -> str:
    """What a refused module has instead, for the one-line error."""
    signatures = sorted(getattr(loaded, "signatures", None) or {})
    parts = [f"signatures {signatures}" if signatures else "no signatures",
             "a callable" if callable(loaded) else "no callable",
             f"{len(getattr(loaded, 'variables', ()) or ())} variables"]
    return ", ".join(parts)
