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
