"""Foundations every step uses: typed params, paths, atomic writes, locks, task metrics."""
