"""Helpers for tests of the dataplane and of programs built on it."""
