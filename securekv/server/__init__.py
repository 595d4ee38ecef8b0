"""trio runtime: node loop, listeners, timers."""
