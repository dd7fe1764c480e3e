"""The one exception type for mistakes a user can make.

The CLI turns a :class:`UserError` into a single line on stderr and exit code 2;
anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input (file, flag, YAML key, data set...), stated in one line."""


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (its type's name when the message is empty): what a one-line
    :class:`UserError` quotes of an error raised by a library or by the user's own code."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
