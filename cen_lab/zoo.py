"""The zoo: a CEN in the reference code's layout, and the worked example of cen_lab on it.

This module gathers three layers' parts under the name the README and ``notebooks/bring_your_own.ipynb`` use:

- the models (``cen_lab.network.zoo``): ``ReferenceStyleCEN`` and its pieces, ``without_exchange``,
  ``reference_slim_params``, ``reference_l1``, ``segmentation_loss``, ``effective_lam``;
- the plain training loop and the example run (``cen_lab.experiments.zoo_example``): ``hand_written_loop``,
  ``train_reference_style``, ``run_example``, ``regime``;
- Theorem 1's check on it (``cen_lab.theory.zoo_check``): ``training_batches``, ``check_theorem``;
- the translation CEN in the reference's layout (``cen_lab.network.zoo_translation``): ``ReferenceStyleTranslator``,
  ``InstanceNorm2dParallel``, ``insnorm_params``, ``translator_slim_params``; and its loop and example
  (``cen_lab.experiments.zoo_translation``): ``translation_loop``, ``train_reference_translator``,
  ``run_translation_example``, ``gamma_agreement`` (an imported run against the observed one).
"""

from .experiments.zoo_example import (EXAMPLE_PRESETS, ZooRun, hand_written_loop, regime, run_example,
                                      train_reference_style)
from .network.zoo import (Bottleneck, BatchNorm2dParallel, Exchange, ModuleParallel, ReferenceStyleCEN,
                          effective_lam, reference_l1, reference_slim_params, segmentation_loss, without_exchange)
from .experiments.zoo_translation import (TRANSLATION_EXAMPLE_PRESETS, ZooTranslation, gamma_agreement,
                                          run_translation_example, train_reference_translator, translation_loop)
from .network.zoo_translation import (InstanceNorm2dParallel, ReferenceStyleTranslator, TranslatorDown, TranslatorUp,
                                      insnorm_params, translator_slim_params)
from .theory.zoo_check import check_theorem, training_batches

__all__ = ["ModuleParallel", "BatchNorm2dParallel", "Exchange", "Bottleneck", "ReferenceStyleCEN",
           "reference_slim_params", "reference_l1", "hand_written_loop", "segmentation_loss", "without_exchange",
           "effective_lam", "ZooRun", "train_reference_style", "training_batches", "regime",
           "EXAMPLE_PRESETS", "run_example", "check_theorem", "InstanceNorm2dParallel", "ReferenceStyleTranslator",
           "TranslatorDown", "TranslatorUp", "insnorm_params", "translator_slim_params", "translation_loop",
           "train_reference_translator", "run_translation_example", "ZooTranslation", "TRANSLATION_EXAMPLE_PRESETS",
           "gamma_agreement"]
