"""Stage 2: the black boxes opened (weeks 4-8), each checked against the library it re-derives."""
