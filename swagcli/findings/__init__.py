"""`swag findings`: the papers' ablations at small scale (runner, report)."""
