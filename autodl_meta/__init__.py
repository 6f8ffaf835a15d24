"""Runtime of the AutoDL submission: everything model.py runs (no dependency on offline/, ingestion_local/ or scoring_local/)."""
