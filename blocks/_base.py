"""Shared behaviour of driftloop's block types: loading with errors that name the block."""

from __future__ import annotations

from typing import TypeVar, cast

from prefect.blocks.core import Block
from prefect.exceptions import ObjectNotFound
from pydantic import ValidationError

from driftloop.core.errors import BlockConfigurationError

B = TypeVar("B", bound="DriftloopBlock")
E = TypeVar("E", bound=BaseException)


def _in_chain(exc: BaseException, kind: type[E]) -> E | None:
    """The first exception of type `kind` in `exc`'s ``raise ... from`` chain, if any.

    `Block.load` re-raises what went wrong as a generic exception chained to the typed one
    (ValueError from ObjectNotFound, RuntimeError from ValidationError), so the chain, not
    the wording of Prefect's messages, says what happened.
    """
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, kind):
            return cause
        cause = cause.__cause__
    return None


class DriftloopBlock(Block):
    """Base class of driftloop's block types.

    Each type sets `_documentation_url` to the public docs of the component it configures
    (driftloop has no hosted docs) and `_logo_url` to that project's GitHub organisation
    avatar, which is square and served at the requested size, as the Prefect UI expects.
    """

    @classmethod
    def load_named(cls: type[B], name: str) -> B:
        """Load a block document, turning Prefect's errors into ones that name the block.

        A missing document and a document that no longer validates against the block schema
        (e.g. one saved before a field became required) both raise
        :class:`BlockConfigurationError` with the block type slug and document name.
        """
        ref = f"{cls.get_block_type_slug()}/{name}"
        try:
            # Prefect has no sync-only `load`; blocks are loaded from sync code only, where
            # its async dispatch returns the block itself, not a coroutine.
            block = cast(B, cls.load(name))
        except (ObjectNotFound, ValueError, RuntimeError) as exc:
            if _in_chain(exc, ObjectNotFound) is not None:
                raise BlockConfigurationError(
                    f"Block {ref!r} does not exist. Create it in the Prefect UI (Blocks > +) or "
                    f"run `make up` to create the default documents."
                ) from exc
            # The ValidationError names the offending fields; Prefect's wrapper does not.
            invalid = _in_chain(exc, ValidationError)
            if invalid is None and not isinstance(exc, ValueError):
                raise
            detail = invalid if invalid is not None else exc
            raise BlockConfigurationError(f"Block {ref!r} is misconfigured: {detail}") from exc
        block.check(ref)
        return block

    def check(self, ref: str) -> None:
        """Validate the configuration beyond field types; raise BlockConfigurationError."""
