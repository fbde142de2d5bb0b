"""Readers: bytes from host paths (via HostPaths). They know no formats."""
