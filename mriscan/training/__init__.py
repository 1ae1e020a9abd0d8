"""Training: from a store and a ``TrainConfig`` to a saved, calibrated model and its numbers.

Who owns what (one responsibility per module, imported in this order):

- ``history``: ``JsonHistory``, the callback that writes ``history.json`` after each epoch.
- ``optimizer``: ``compile_model`` (AdamW, warm-up + cosine schedule, loss, metrics) and the
  balanced class weights.
- ``fit``: ``fit_model`` (one Keras fit, callbacks, checkpoint, implants) and
  ``fit_and_calibrate`` — THE sequence fit on train → threshold on validation → predict test,
  used by both ``train`` and ``cross_validate``.
- ``pretrain``: phantom pre-training and its weight cache.
- ``workflow``: ``train`` — split, hardware, pre-train, ``fit_and_calibrate``, artifacts.
- ``crossval``: ``cross_validate`` — k folds of ``fit_and_calibrate`` and their summary.

Settings live in ``mriscan.config``; output paths and records in ``mriscan.artifacts``.
"""
