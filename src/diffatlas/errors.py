"""User-facing errors: the CLI prints the message as one line and exits with code 2."""


class UserError(Exception):
    """Bad input from the user: a config, a path, a name, a number. One line, no traceback."""


def one_line(msg: str) -> str:
    return " ".join(str(msg).split())
