"""What khod says to the system's own services: the journal (sd), udev."""
