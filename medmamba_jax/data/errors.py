"""The one exception type for bad data inputs; its message is meant to be shown as is."""


class DataError(ValueError):
    """A dataset is missing, empty or inconsistent. ``str(err)`` is a one-line explanation."""
