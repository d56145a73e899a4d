"""End-to-end tier: all six services as processes (a package, so its `system` fixture ends with it)."""
