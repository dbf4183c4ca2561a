"""Module families: one file each."""
