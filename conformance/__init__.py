"""The conformance suite: Backend contract, strategies, tests, plugin and CLI (work in progress, issue 5)."""
