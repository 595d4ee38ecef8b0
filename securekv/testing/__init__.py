"""Pure test support shared by the simulator and the test-suite (no I/O, no global randomness)."""
