"""kshot's exception types: every bad input raises one of these with a message saying what and where."""


class KshotError(Exception):
    """Base class for errors caused by user input (files, configs, arguments)."""


class DataError(KshotError):
    """A dataset, split file, list file or image is malformed or missing."""


class CheckpointError(KshotError):
    """A checkpoint is missing, truncated, of an unknown format or holds objects we refuse to load."""


class CacheError(KshotError):
    """A feature cache is unreadable or inconsistent with its manifest."""


class ConfigError(KshotError):
    """A configuration value or override is invalid."""


class ExportError(KshotError):
    """A fitted method cannot be exported as a fixed graph, or an exported graph disagrees with kshot."""
