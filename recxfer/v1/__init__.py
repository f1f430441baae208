"""Generated gRPC stubs for ``protos/recxfer/v1`` (written at install time by setup.py)."""
