"""Evaluation shared by training and the evaluation tools: metrics and batched prediction."""

from medmamba_jax.evaluation.metrics import SUMMARY_KEYS, compute_metrics, metrics_and_outcomes, summary
from medmamba_jax.evaluation.predict import predict_scores

__all__ = ["SUMMARY_KEYS", "compute_metrics", "metrics_and_outcomes", "predict_scores", "summary"]
