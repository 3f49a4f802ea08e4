"""Policy at the door: routing rules and data locality (CONTRACT §7)."""
