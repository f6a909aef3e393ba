"""Pure, jit-able augmentations for segmentation: one example at a time, batched with vmap.

Modules:
  ``geometric``: affine ops, flips, rot90, random resized crop, elastic deformation; each
    returns the ``Warp`` it drew, and ``geometric.invert`` maps a prediction back.
  ``photometric``: colour jitter (torchvision semantics), grayscale, blur, the PIL ops of
    AutoAugment, and the UniMatch / French strong-colour presets. Never touch the mask.
  ``mixing``: CutMix box samplers (UniMatch, CPS/French, U2PL, Yun), ClassMix, Cutout,
    Random Erasing, Mixup, and ``mix`` to apply one mask to every target of a batch.
  ``policies``: AutoAugment and RandAugment as data, applied with ``lax.switch``.
  ``adversarial``: FGSM, PGD, VAT and DeepFool built on ``jax.grad`` of the input.

Conventions: images float32 ``[H, W, 3]`` in [0, 1]; masks int32 ``[H, W]`` with 255 =
ignore; random functions take a ``jax.random`` key first and every hyper-parameter by
keyword; geometric ops sample masks with nearest neighbour and fill 255.
"""
