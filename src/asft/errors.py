"""The one exception type users see: a clear, one-line message naming the file and the problem."""


class AsftError(Exception):
    """Bad input or a failed run. The CLI prints ``str(err)`` on one line and exits with code 2."""


class AsftWarning(UserWarning):
    """A setting that runs but probably does not do what the user expects (printed once)."""
