"""The one exception type for what a user did wrong (bad input, impossible settings).

The CLI prints an :class:`SgausError` as one line and exits non-zero; any other exception is a
bug and keeps its traceback. It lives beside the simulator because taichi_sim/, render/ and
pipeline/ all raise it, and the first two never import pipeline/.
"""


class SgausError(ValueError):
    """A user's mistake: a missing or malformed file, an impossible option, an unstable simulation."""
