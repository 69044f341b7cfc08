"""Implementations of `queueing.EventQueue`: `sqlite` (embedded default) and `jetstream` (NATS, replicated gateways)."""
