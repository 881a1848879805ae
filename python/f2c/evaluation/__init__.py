"""Face-recognition evaluation: pair sets, YTF, IJB-C 1:1 and 1:N, MegaFace — exact, streamed.

Modules: :mod:`~f2c.evaluation.metrics` (k-fold accuracy, TAR@FAR, ROC),
:mod:`~f2c.evaluation.features` (batched extraction + feature store),
:mod:`~f2c.evaluation.pairs`, :mod:`~f2c.evaluation.ytf`, :mod:`~f2c.evaluation.ijbc`,
:mod:`~f2c.evaluation.identification` (1:N),
:mod:`~f2c.evaluation.megaface`, :mod:`~f2c.evaluation.report`, and
:mod:`~f2c.evaluation.benchmarks` (the table of benchmark kinds the command line
``python -m f2c.evaluate`` runs).
"""

from f2c.evaluation.metrics import kfold_accuracy, tar_at_far, tar_at_far_roc_nearest
from f2c.evaluation.pairs import evaluate_pairs

__all__ = ["evaluate_pairs", "kfold_accuracy", "tar_at_far", "tar_at_far_roc_nearest"]
