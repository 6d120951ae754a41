"""Typed errors: the library raises these, the CLI turns each into one line and an exit code."""


class LfqtokError(Exception):
    """Base of every error a user can cause; `exit_code` is what the CLI exits with."""

    exit_code = 1


class UsageError(LfqtokError):
    """Invalid arguments or configuration, found before any work starts."""

    exit_code = 2


class InputError(LfqtokError):
    """An input path, list or shard that is missing or unreadable."""


class VideoError(LfqtokError):
    """One video could not be decoded; an encode run records it and goes on."""


class ImageError(LfqtokError):
    """One image could not be decoded (truncated, corrupt, not an image, too many pixels); recorded like a video."""


class ModelError(LfqtokError):
    """A tokenizer checkpoint that is missing, corrupt or does not match the tokens."""


class OutputError(LfqtokError):
    """The output directory cannot be written, or holds what this run may not resume or replace."""


class OutputRefused(OutputError, UsageError):
    """OUT holds a run with other settings or inputs, or files lfqtok did not write: refused before any work, and
    fixed by changing the command (the run's settings and inputs, --append, --overwrite, another OUT)."""

    exit_code = 2
