"""Ingest: ``steps`` (save a boot, rescan pstore, recover spools), ``pipeline`` (one
ingest, start to end, from an ``IngestJob``), ``worker`` (the daemon's later ingests
as a process of their own)."""
