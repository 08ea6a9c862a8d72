"""Tracking: every search is one MLflow run (params, per-epoch metrics, genotypes, alphas)."""

from raynas.tracking.mlflow_tracker import MlflowTracker, default_tracking_uri

__all__ = ["MlflowTracker", "default_tracking_uri"]
