"""CaseResult, aggregation, results.json, the journal and the gate."""
