"""Errors a user's input can cause.

Their messages are shown verbatim to API users (as HTTP 4xx bodies) and on the command line, so
each one says what was wrong with the input and what to send instead.
"""

from __future__ import annotations


class InputError(ValueError):
    """A request input (audio, face photo, parameter) that cannot be used; safe to show a user."""


class AudioError(InputError):
    """The speech audio is missing, unreadable, damaged or outside the accepted limits."""


class FaceError(InputError):
    """The reference face photo is unreadable or contains no usable face."""


class TooLargeError(InputError):
    """An input over a size or duration limit (HTTP 413 from the server)."""


class AudioTooLongError(AudioError, TooLargeError):
    """The audio is longer than the accepted limit."""
