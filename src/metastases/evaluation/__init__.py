"""Metrics, thresholds and confidence intervals for held-out and cross-validation predictions."""

from metastases.evaluation.metrics import auc, bootstrap_auc_ci, metrics_at, roc_table, youden_threshold

__all__ = ["auc", "bootstrap_auc_ci", "metrics_at", "roc_table", "youden_threshold"]
