"""The one exception type for problems a user can fix, and one-line messages."""


class UserError(Exception):
    """A problem the user can fix (bad flag, missing file); printed as one line, exit status 2."""


def one_line(text: str) -> str:
    """`text` with line breaks and other unprintable characters escaped (`\\n`), so that a message
    quoting a user's value stays on one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
