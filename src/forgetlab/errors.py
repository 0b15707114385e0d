"""The one error type that means "the user gave bad input": the CLI prints it as one line and exits 2."""


class UserError(Exception):
    """Bad config, missing file, malformed data: a message that names the place and what is wrong."""
