"""Reconcilers (one module per kind) and the kopf wiring in `main`."""
