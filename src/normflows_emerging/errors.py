"""Errors of the library that are the user's to handle."""


class NonFiniteError(ValueError):
    """Numbers that must be finite are NaN or infinite: samples, or a model's parameters after a
    training step (training stops rather than save them)."""
