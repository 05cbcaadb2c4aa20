"""Shared behaviour of driftloop's block types: loading with errors that name the block."""

from __future__ import annotations

from typing import TypeVar

from prefect.blocks.core import Block
from pydantic import ValidationError

from driftloop.core.errors import BlockConfigurationError

B = TypeVar("B", bound="DriftloopBlock")


class DriftloopBlock(Block):
    """Base class of driftloop's block types."""

    @classmethod
    def load_named(cls: type[B], name: str) -> B:
        """Load a block document, turning Prefect's errors into ones that name the block.

        A missing document and a document that no longer validates against the block schema
        both raise :class:`BlockConfigurationError` with the block type slug and document name.
        """
        ref = f"{cls.get_block_type_slug()}/{name}"
        try:
            block = cls.load(name)
        except ValueError as exc:
            if "Unable to find block document" in str(exc):
                raise BlockConfigurationError(
                    f"Block {ref!r} does not exist. Create it in the Prefect UI (Blocks > +) or "
                    f"run `make up` to create the default documents."
                ) from exc
            raise BlockConfigurationError(f"Block {ref!r} is misconfigured: {exc}") from exc
        except ValidationError as exc:
            raise BlockConfigurationError(f"Block {ref!r} is misconfigured: {exc}") from exc
        block.check(ref)
        return block

    def check(self, ref: str) -> None:
        """Validate the configuration beyond field types; raise BlockConfigurationError."""
