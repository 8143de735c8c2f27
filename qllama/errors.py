"""One exception family: the CLI prints its message as one line and exits 1; and the
test of a whole-number argument the library's UsageErrors share."""
import numbers


class QllamaError(Exception):
    """Base class: a problem the user can act on (bad file, bad flag, bad path)."""


class FormatError(QllamaError):
    """A model file whose header or size does not describe a valid checkpoint."""


class TokenizerError(QllamaError):
    """A tokenizer file that cannot be read, or one that does not fit the model."""


class UsageError(QllamaError):
    """A flag or argument out of range, or a path that cannot be used."""


def whole_number(v) -> bool:
    """An int or numpy integer, not a bool: what a count, a seed or a token id must be."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


class QllamaWarning(UserWarning):
    """Something works, but not as the user may expect (the CLI prints it as one line)."""
