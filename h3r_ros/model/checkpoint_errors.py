"""The errors raised while reading, converting and loading Human3R checkpoints."""


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read, or does not match the model it describes."""


class UnsafePickleError(CheckpointError):
    """A checkpoint's pickle tries to call something outside the allow-list."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint file does not exist."""
