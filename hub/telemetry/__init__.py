"""Usage ingestion, meters and usage queries (issue #5)."""
