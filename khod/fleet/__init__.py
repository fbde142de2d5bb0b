"""The fleet: the khod-export format, export and import between stores, sync from a
host to the fleet database, and the reports over it."""
