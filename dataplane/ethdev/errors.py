"""Errors of the port layer."""


class EthdevError(ValueError):
    """A port cannot be created or configured (bad devargs, refused option); the message says why."""
