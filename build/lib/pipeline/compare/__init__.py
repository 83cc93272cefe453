"""Comparison: leaderboard, reports, champion aliases."""
