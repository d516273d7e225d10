"""Stage 1: working demos first (weeks 1-3). One script per demo."""

import curriculum  # noqa: F401  (first: it quiets library notices before any library loads)
