"""Metrics: arrays in, numbers out. Imports neither `selfsup` nor `render`."""
