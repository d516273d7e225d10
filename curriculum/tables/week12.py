"""docs/week12.md's table: the einsum drills checked, from results/week12/check.json."""

from curriculum.tables import checks, table

table("week12.check", 12, "The einsum drills, each checked", ["week12/check.json"], "make week12")(
    checks("week12/check.json")
)
