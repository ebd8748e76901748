"""Figures of run data.

Every figure is a pair: ``compute_X`` turns run tables into a tidy DataFrame (tested exactly) and
``plot_X(frame, ..., backend="matplotlib" | "plotly")`` draws it and returns the figure object. Each ``plot_*``
checks its frame first and, given another (a raw ``run.gammas``, say), names the ``compute_*`` that makes it.
A few frames come from analyses outside this package: ``plot_fusion_results`` and ``plot_learning_curves`` take
``cen_lab.fusion.compute_fusion_results`` and ``cen_lab.learning_curves.compute_learning_curves``;
``plot_prediction_ece`` takes ``cen_lab.miscalibration.compare_predictions``; ``plot_exchange_predictors`` takes
``cen_lab.theory.exchange_predictors.predictor_scores``; the ``plot_regime_*`` take
``compare_regimes(...).calibration`` / ``.outcome``; ``plot_exchange_settling`` takes ``exchange_curves`` and
``settling_table``; ``compute_lambda_curve`` takes ``cen_lab.predict_exchange``'s answer;
``compute_translation_examples`` takes a translation run (its checkpoint is run on validation images). Plot functions
never show or save anything themselves; matplotlib figures are built without pyplot, so they leave no global
state behind. ``plot_exchange_animation`` is plotly only (a step slider with a play button).
"""

from ._common import BACKENDS, FREE_COLOUR, PENALISED_COLOUR
from .budget import compute_budget_curves, plot_budget_curves
from .forecast import compute_forecast_path, plot_forecast_path
from .diagnosis import compute_diagnosis, compute_regime_comparison, plot_diagnosis, plot_regime_comparison
from .curves import compute_metric_across_runs, compute_training_curves, plot_metric_across_runs, plot_training_curves
from .exchange import (compute_exchange_animation, compute_exchange_maps, compute_exchange_snapshot, compute_exchange_ratio, compute_flip_counts, compute_flip_events,
                       plot_exchange_animation, plot_exchange_maps, plot_exchange_ratio, plot_exchange_snapshot,
                       plot_flip_counts)
from .fusion import plot_fusion_results
from .gammas import (compute_gamma_snapshot, compute_gamma_trajectories, compute_sparsity, plot_gamma_distributions, plot_gamma_snapshot,
                     plot_gamma_trajectories, plot_sparsity)
from .lambdas import compute_lambda_curve, plot_lambda_curve
from .learning import plot_exchange_settling, plot_learning_curves
from .miscalibration import compute_drift, plot_drift, plot_exchange_predictors, plot_prediction_ece
from .regimes import plot_regime_calibration, plot_regime_outcome
from .theory import (compute_controlled_check, compute_corollary, compute_dynamic_check, compute_outcome, compute_qq,
                     compute_reliability, plot_controlled_check, plot_corollary, plot_dynamic_check, plot_outcome, plot_qq,
                     plot_reliability)
from .translation import compute_translation_examples, plot_translation_examples

__all__ = [
    "compute_diagnosis", "plot_diagnosis", "compute_regime_comparison", "plot_regime_comparison",
    "BACKENDS", "FREE_COLOUR", "PENALISED_COLOUR",
    "compute_exchange_maps", "compute_exchange_ratio", "compute_flip_counts", "compute_flip_events",
    "compute_gamma_snapshot", "compute_metric_across_runs", "plot_metric_across_runs", "compute_gamma_trajectories", "compute_sparsity", "compute_training_curves",
    "plot_exchange_animation", "plot_exchange_maps", "plot_exchange_ratio", "plot_exchange_snapshot",
    "plot_flip_counts", "plot_gamma_distributions", "plot_gamma_snapshot", "compute_exchange_snapshot",
    "compute_exchange_animation", "compute_controlled_check", "compute_dynamic_check", "compute_reliability",
    "compute_outcome", "compute_corollary", "plot_gamma_trajectories", "plot_sparsity",
    "plot_training_curves", "compute_qq", "plot_controlled_check", "plot_corollary", "plot_dynamic_check",
    "plot_outcome", "plot_qq", "plot_reliability", "plot_fusion_results", "plot_regime_calibration",
    "plot_regime_outcome", "compute_drift", "plot_drift", "plot_prediction_ece", "plot_exchange_predictors",
    "plot_learning_curves", "plot_exchange_settling", "compute_lambda_curve", "plot_lambda_curve",
    "compute_translation_examples", "plot_translation_examples", "compute_budget_curves", "plot_budget_curves",
    "compute_forecast_path", "plot_forecast_path",
]
