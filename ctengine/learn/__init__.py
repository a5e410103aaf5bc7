"""The learning side: slices from the store into PyTorch, the classifier, training and evaluation.

- :mod:`~ctengine.learn.loader`: zero-copy batches of stored slices (:class:`SliceLoader`)
- :mod:`~ctengine.learn.network`, :mod:`~ctengine.learn.model`: the ResNet-FPN classifier, checkpoints
- :mod:`~ctengine.learn.augment`: the paper's random affine warp on the device
- :mod:`~ctengine.learn.train`: training on a fold of a store
- :mod:`~ctengine.learn.predict`: probabilities of stored slices, the automated path on a patient's folder
- :mod:`~ctengine.learn.evaluate`: the paper's evaluation of a fold
- :mod:`~ctengine.learn.metrics`: the paper's metrics and plots (no torch)
- :mod:`~ctengine.learn.device`: the device vocabulary (cpu, gpu, auto)

Every module but ``metrics`` needs torch (the ``train`` extra); this package
imports none of them by itself.
"""
