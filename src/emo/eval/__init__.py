"""Evaluation: the metrics of EMO's Table 1 (EMO.md §6), computed the standard way.

- :mod:`~emo.eval.frechet`: Fréchet distance between Gaussian fits of feature sets (FID, FVD, E-FID).
- :mod:`~emo.eval.inception`: pytorch-fid's Inception-v3 (``pt_inception-2015-12-05``) for FID.
- :mod:`~emo.eval.i3d`: StyleGAN-V's TorchScript I3D (``i3d_torchscript.pt``) for FVD.
- :mod:`~emo.eval.syncnet`: SyncNet (``syncnet_v2.model``) and MFCC for LSE-C / LSE-D.
- :mod:`~emo.eval.arcface`: insightface iResNet (``backbone.pth``) for F-SIM.
- :mod:`~emo.eval.expression`: Deep3DFaceRecon's coefficient regressor (``epoch_20.pth``) for E-FID, and a
  landmark expression proxy that needs no weights.
- :mod:`~emo.eval.reconstruction`: PSNR / SSIM.
- :mod:`~emo.eval.motion`: head-motion statistics of EMO's speed ablation.
- :mod:`~emo.eval.metrics`: the metric protocol: one :class:`~emo.eval.metrics.Metric` object per metric
  (each next to its network above), and the registry.
- :mod:`~emo.eval.evaluate`: pairs videos, hands each to the metrics; :mod:`~emo.eval.report`: JSON + markdown.

Learned metrics load public weight files from paths the user gives; without them a metric is reported
"unavailable" together with the flag that enables it, never computed with a substitute network.
"""
