"""Tracking: MLflow runs (a parent per search, a child per candidate, lineage, the Model
Registry), pictures, the Parquet results store and ``s3://`` storage."""

from raynas.tracking.mlflow_tracker import MlflowTracker, default_tracking_uri, lineage_tags
from raynas.tracking.results import ResultsStore, SearchInfo, search_id

__all__ = ["MlflowTracker", "ResultsStore", "SearchInfo", "default_tracking_uri", "lineage_tags", "search_id"]
