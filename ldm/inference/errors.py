"""The error raised for bad user input (files, folders, options); its message is one line."""


class InputError(ValueError):
    """Bad input named in a one-line message, e.g. 'frames/00003.jpg: truncated image'."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type name if it has none)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
