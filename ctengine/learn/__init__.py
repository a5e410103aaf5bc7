"""The learning side: slices from the store into PyTorch, the classifier, training and evaluation.

- :mod:`~ctengine.learn.loader`: batches of stored slices in HU (:class:`SliceLoader`), the
  ``torch.utils.data.Dataset`` view with MONAI-style dictionary samples (:class:`SliceDataset`)
- :mod:`~ctengine.learn.samples`: raw -> HU / int32 HU / window conversion, the dictionary sample
- :mod:`~ctengine.learn.network`, :mod:`~ctengine.learn.model`: the ResNet-FPN classifier, checkpoints
- :mod:`~ctengine.learn.augment`: the paper's random affine warp on the device
- :mod:`~ctengine.learn.train`: training on a fold of a store
- :mod:`~ctengine.learn.predict`: probabilities of stored slices, the automated path on a patient's folder
- :mod:`~ctengine.learn.evaluate`: the paper's evaluation of a fold
- :mod:`~ctengine.learn.metrics`: the paper's metrics and plots (no torch)
- :mod:`~ctengine.learn.device`: the device vocabulary (cpu, gpu, auto), batches on a device

Every module but ``metrics`` needs torch (the ``train`` extra); this package
imports none of them by itself.
"""
