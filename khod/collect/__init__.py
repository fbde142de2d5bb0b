"""Collection: every source of a boot read and parsed into one observation; a failing
source becomes an event, never a lost boot."""
