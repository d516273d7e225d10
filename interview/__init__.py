"""Week 12: interview preparation backed by runnable evidence."""

import curriculum  # noqa: F401  (first: it quiets library notices before any library loads)
