"""PMMTalk Server: command line and the real-world inputs (audio files, face photos)."""

__version__ = "0.1.0"
