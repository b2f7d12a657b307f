"""Errors the ``patnet`` command reports in one line (besides ValueError, OSError and ImportError)."""

__all__ = ["PatnetError"]


class PatnetError(RuntimeError):
    """A run could not complete for a reason the user can act on; the message says what happened and what to do."""
