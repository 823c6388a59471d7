"""Orchestrator integrations: one module per orchestrator, each an optional extra, imported only when used."""
