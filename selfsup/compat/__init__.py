"""Work-arounds for third-party packaging problems; nothing here is model code."""
