"""tfft: transfer learning of image classifiers with TensorFlow/Keras.

Library entry points (the command line and the notebooks use the same ones)::

    from tfft import Config, train_and_evaluate
    result = train_and_evaluate(validate(Config()), "runs/demo")
"""

from tfft.config import Config, validate
from tfft.errors import UserError

__version__ = "0.1.0"


def train_and_evaluate(config: Config, workdir: str, strategy=None):
    """Two-phase training and test evaluation; see ``tfft.train_lib.train_and_evaluate``."""
    from tfft import train_lib

    return train_lib.train_and_evaluate(config, workdir, strategy)


__all__ = ["Config", "UserError", "train_and_evaluate", "validate", "__version__"]
