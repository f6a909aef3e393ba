"""jaxsemiseg: semi-supervised semantic segmentation in JAX/Flax.

Public modules: ``config``, ``train`` (``train_and_evaluate``), ``inference``, ``methods``
(``get_method``), ``models`` (``create_model``), ``data`` (``load_datasets``), ``losses``,
``metrics``, ``optim``, ``parallel``, ``checkpoint``, ``visualize``. They are imported on
use, so ``import jaxsemiseg`` stays cheap.
"""

__version__ = "0.1.0"
