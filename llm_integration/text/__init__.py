"""Leaves any layer may import: token counting and field checks."""
