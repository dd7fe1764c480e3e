"""The one exception type for mistakes a user can make.

The CLI turns a :class:`UserError` into a single line on stderr and exit code 2;
anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input (file, flag, YAML key, data set...), stated in one line."""
