"""Model families, one per file; importing this package registers them all."""

from . import cnn, mlp, rnn  # noqa: F401  (registration side effects)
