"""The one exception type for user mistakes: the CLI prints its message in one line."""


class UserError(ValueError):
    """A mistake the user can fix (bad name, missing file, bad flag); the message says how."""
