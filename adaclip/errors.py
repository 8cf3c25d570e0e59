"""The one exception family that users can cause, with messages that say what to do."""


class AdaCLIPError(ValueError):
    """A problem a user can fix: bad input, unknown checkpoint, unreachable Hub.

    Front ends show ``str(error)`` as it is and keep running.

    Attributes:
        reason: What happened, without the advice (for lists of several failures).
    """

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason if reason is not None else message.rstrip(".")


class ImageError(AdaCLIPError):
    """An image could not be read or is not usable (corrupt, empty, too large)."""


class ClassNameError(AdaCLIPError):
    """A class name does not fit the text encoder's context."""


class CheckpointError(AdaCLIPError):
    """A checkpoint is missing, unreadable, tampered with or does not fit the backbone."""


class HubError(CheckpointError):
    """The Hugging Face Hub could not deliver a file (not found, offline, network failure)."""
