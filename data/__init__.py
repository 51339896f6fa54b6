"""Bundled reference sequence sets (see README.md in this directory)."""
