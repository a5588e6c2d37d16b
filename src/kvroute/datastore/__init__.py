"""Endpoints and their immutable metric snapshots."""
