"""Shared, pure training objectives (weights live in the configs)."""
