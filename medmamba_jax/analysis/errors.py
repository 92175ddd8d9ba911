"""The one exception type for bad input to an analysis command; its message is shown as is."""


class ToolError(Exception):
    """Bad input to a command; ``str(err)`` is shown to the user as one line."""
