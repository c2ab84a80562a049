"""The bottom layer: settings-free plumbing every other layer may use.

Errors and their envelopes, the per-request HTDI context, body limits, Prometheus
metrics, the request log, shutdown, test-only faults, thread joining, and the Linux
BLAS loader (``blas/``). Imports only the standard library and third-party packages,
never another ``app`` layer.
"""
