"""Typed errors. Library code raises these; only the CLI formats them.

Every error states what failed, the value received, and the fix (``hint``).
"""

from __future__ import annotations


class CamlabelError(Exception):
    """Base class of every error camlabel raises on purpose.

    Args:
        message: what failed, naming the file or value involved.
        hint: how to fix it (printed on its own line by the CLI).
    """

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class ConfigError(CamlabelError):
    """A setting is missing or invalid (flag, CAMLABEL_* env or workspace file)."""


class WorkspaceError(CamlabelError):
    """The workspace is missing, not initialised or damaged."""


class LedgerError(CamlabelError):
    """The ledger cannot be read or written, or a record is invalid."""


class ImageReadError(CamlabelError):
    """An input image is corrupt, truncated, empty or of an unsupported format."""


class GeometryError(CamlabelError):
    """A polygon, mask or RLE is invalid and cannot be repaired."""


class ModelError(CamlabelError):
    """A model cannot be built, loaded or used (bad weights, wrong shape...)."""


class BackendError(CamlabelError):
    """A labeling backend (Label Studio, Ground Truth) refused or failed a request."""


class BackendUnavailable(BackendError):
    """The backend could not be reached after bounded retries."""


class ValidationError(BackendError):
    """A request was refused offline, before sending, against the API model."""


class AnnotationError(CamlabelError):
    """An annotation cannot be turned into a mask (size mismatch, bad geometry...)."""


class NotImplementedYet(CamlabelError):
    """A command exists in the CLI contract but is not implemented yet."""


class UsageError(CamlabelError):
    """Bad combination of arguments; exits with 2 like click's own usage errors."""

    exit_code = 2


class BatchError(CamlabelError):
    """Some items of a batch failed; the others were processed.

    Args:
        failures: (item, reason) pairs, one per failed item.
    """

    def __init__(self, message: str, failures: list[tuple[str, str]], *, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.failures = failures
