"""The daemon: its loop, the first ingest it forks, its children, /metrics."""
