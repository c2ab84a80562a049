"""Which models exist and which are in memory: the registry (YAML or built-in
defaults), the manager that loads, leases, evicts and unloads them and starts their
engines, residency rules (keep-alive, memory budget), and the ``convert`` command.

Imports ``app.engine``, ``app.models``, ``app.core`` and ``app.config``.
"""
