"""The problems negflow reports to its user as one line, without a traceback (see `negflow.stage`)."""


class InputError(ValueError):
    """Bad input data; the message is one line naming the file and line or id."""


class ConfigError(ValueError):
    """A configuration problem, phrased as one line that names the key."""
