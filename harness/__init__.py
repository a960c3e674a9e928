"""Running code on N ranks: worker pools, timeouts, simulated worlds (work in progress, issue 4)."""
