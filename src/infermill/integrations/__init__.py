"""Orchestrator integrations: Airflow, Prefect, Dagster (each an optional extra, imported only here)."""
