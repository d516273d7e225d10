"""Stage 3: the multimodal moderation service (weeks 9-11)."""

import curriculum  # noqa: F401  (first: it quiets library notices before any library loads)
