"""Evaluation shared by training and the evaluation tools: metrics and batched prediction."""

from medmamba_jax.evaluation.metrics import SUMMARY_KEYS, compute_metrics, summary
from medmamba_jax.evaluation.predict import predict_scores

__all__ = ["SUMMARY_KEYS", "compute_metrics", "predict_scores", "summary"]
