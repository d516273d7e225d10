"""docs/colab.md's tables: each notebook's tiny profile timed, from results/notebooks/times.json."""

from curriculum.tables import Table, table, value

NOTEBOOK_TIMES = "notebooks/times.json"  # tests/test_notebooks.py writes it (outputs/notebooks/times.json)


@table(
    "notebooks.tiny_times",
    None,  # shown in docs/colab.md only: the lab notebook's sections are the weeks and the models
    "Each notebook's tiny profile, top to bottom",
    [NOTEBOOK_TIMES],
    "make test",
)
def notebook_times(results):
    r = results(NOTEBOOK_TIMES)
    rows = [[int(name[4:6]), f"`{name}.ipynb`", f"{seconds:.0f} s"] for name, seconds in r["seconds"].items()]
    return Table(["week", "notebook", f"wall time (budget {r['budget_s']} s)"], rows)


@value("notebooks.machine", [NOTEBOOK_TIMES], "make test")
def notebook_machine(results):
    r = results(NOTEBOOK_TIMES)
    where = f"{r['machine']}, Python {r['python']}, torch {r['torch']}"
    return f"{len(r['seconds'])} notebooks, {sum(r['seconds'].values()):.0f} s in all, on {where}"
