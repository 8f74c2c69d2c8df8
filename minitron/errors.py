"""The one exception type the CLI turns into a one-line error and exit code 2."""


class MinitronError(Exception):
    """A problem with the user's input: bad model spec, bad recipe, bad output path.

    The message is shown to the user as-is, on one line, without a traceback.
    """


def first_line(err: BaseException) -> str:
    """The first non-empty line of an exception's message (or its type name)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
