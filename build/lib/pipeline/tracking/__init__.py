"""MLflow conventions: stage runs, model registration, resumable checkpoints."""
