"""hello-transformers library: one sub-package per lifecycle step (no Prefect, no DVC; flows/ orchestrates)."""
