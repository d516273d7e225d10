"""docs/week04.md's table: attention and the decoder checked, from results/week4/check.json."""

from curriculum.tables import checks, table

table(
    "week4.check",
    4,
    "Attention and the decoder from scratch vs torch and transformers",
    ["week4/check.json"],
    "make week4",
)(checks("week4/check.json"))
