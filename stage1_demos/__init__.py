"""Stage 1: working demos first (weeks 1-3). One script per demo."""
