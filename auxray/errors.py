"""User-facing errors: bad input that the CLI reports in one line with exit code 2."""


class UserError(Exception):
    """A problem with what the user gave (config, paths, URIs), reported without a traceback."""
