"""Stage 2: the black boxes opened (weeks 4-8), each checked against the library it re-derives."""

import curriculum  # noqa: F401  (first: it quiets library notices before any library loads)
