"""Paper experiments: the small-scale reproduction table, oracle temperatures, the fit probe (docs/results.md)."""
