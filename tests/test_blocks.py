"""Block types: Prefect's block test suite, no demo defaults, errors that name the block.

The standard suite and the defaults checks need no Prefect server; the `load_named` tests use
the session's real server, because what they check is how driftloop reads the errors Prefect's
client and API actually raise.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any
from urllib.error import HTTPError, URLError

import pytest
from prefect.blocks.core import Block
from prefect.testing.standard_test_suites import BlockStandardTestSuite
from prefect.testing.standard_test_suites.blocks import HAS_PIL
from pydantic import ValidationError

import blocks
from blocks import (
    DriftPolicy,
    DvcDataset,
    FeastFeatureStore,
    MlflowTracking,
    RayCluster,
    ServingConfig,
)
from blocks._base import DriftloopBlock
from driftloop.app import demo as demo_names
from driftloop.core.errors import BlockConfigurationError
from tests.helpers import unique

BLOCK_TYPES: tuple[type[DriftloopBlock], ...] = (
    DriftPolicy,
    DvcDataset,
    FeastFeatureStore,
    MlflowTracking,
    RayCluster,
    ServingConfig,
)

# Fetching a logo should fail fast offline rather than hang on a black-holed connection.
LOGO_FETCH_TIMEOUT_S = 30.0


def test_every_exported_block_type_is_covered() -> None:
    exported = {getattr(blocks, name) for name in blocks.__all__}
    exported_blocks = {b for b in exported if isinstance(b, type) and issubclass(b, Block)}
    assert exported_blocks == set(BLOCK_TYPES)


class TestBlockStandards(BlockStandardTestSuite):
    """Prefect's `BlockStandardTestSuite`, run over every driftloop block type."""

    @pytest.fixture(params=BLOCK_TYPES, ids=lambda b: b.__name__)
    def block(self, request: pytest.FixtureRequest) -> type[Block]:
        return request.param

    @pytest.fixture
    def _bounded_socket_timeout(self) -> Iterator[None]:
        # The suite calls urlopen without a timeout; bound it for this test only.
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(LOGO_FETCH_TIMEOUT_S)
        try:
            yield
        finally:
            socket.setdefaulttimeout(previous)

    @pytest.mark.skipif(not HAS_PIL, reason="PIL/Pillow is not available")
    @pytest.mark.usefixtures("_bounded_socket_timeout")
    def test_has_a_valid_image(self, block: type[Block]) -> None:
        """The suite's logo check (square, 46-999 px), run as is when the logo host answers.

        It downloads the logo. With no route to the host (a sandbox, an offline laptop) it
        is skipped, not failed: that says nothing about the logo. An HTTP error from the host
        (404, 403, ...) means the URL is wrong and fails the test.
        """
        assert block._logo_url is not None, f"{block.__name__} is missing a value for _logo_url"
        try:
            super().test_has_a_valid_image(block)
        except HTTPError:
            raise
        except (URLError, TimeoutError) as exc:
            pytest.skip(f"logo host unreachable, image not checked: {block._logo_url} ({exc})")


# --- no demo defaults ---------------------------------------------------------------------

# Every name the churn demo configures its blocks and deployments with. The demo's timestamp
# column is left out: it is "event_timestamp", Feast's own conventional name, which is also
# the neutral default of DvcDataset.timestamp_column.
DEMO_NAMES = {
    demo_names.DEMO_DATASET,
    demo_names.DEMO_TABLE_PATH,
    demo_names.DEMO_LABEL,
    demo_names.DEMO_ENTITY,
    demo_names.DEMO_FEATURE_SERVICE,
    demo_names.DEMO_MODEL_NAME,
    demo_names.DEMO_EXPERIMENT,
}
DEMO_WORDS = ("churn", "customer")


def _defaults(block: type[Block]) -> dict[str, Any]:
    return {
        name: field.get_default(call_default_factory=True)
        for name, field in block.model_fields.items()
        if not field.is_required()
    }


@pytest.mark.parametrize("block", BLOCK_TYPES, ids=lambda b: b.__name__)
def test_no_field_defaults_to_a_demo_name(block: type[Block]) -> None:
    for name, default in _defaults(block).items():
        where = f"{block.__name__}.{name} defaults to {default!r}"
        assert not (isinstance(default, str) and default in DEMO_NAMES), where
        text = json.dumps(default, default=str).lower()
        assert not any(word in text for word in DEMO_WORDS), where


def test_dataset_requires_its_entity_columns() -> None:
    with pytest.raises(ValidationError, match="entity_columns"):
        DvcDataset(name="loans", repo="/data/registry", path="data/loans.parquet")  # type: ignore[call-arg]
    dataset = DvcDataset(
        name="loans", repo="/data/registry", path="data/loans.parquet", entity_columns=["id"]
    )
    assert dataset.table_schema().entity_columns == ("id",)


# --- load_named against a real Prefect server ---------------------------------------------


@pytest.mark.usefixtures("prefect_server")
def test_load_named_reports_a_missing_document() -> None:
    name = unique("missing")
    with pytest.raises(BlockConfigurationError) as caught:
        DvcDataset.load_named(name)
    assert str(caught.value) == (
        f"Block 'driftloop-dvc-dataset/{name}' does not exist. Create it in the Prefect UI "
        "(Blocks > +) or run `make up` to create the default documents."
    )


@pytest.mark.usefixtures("prefect_server")
def test_load_named_loads_and_checks_a_saved_document() -> None:
    name = unique("policy")
    DriftPolicy(num_method="psi", drift_share=0.5).save(name)
    loaded = DriftPolicy.load_named(name)
    assert (loaded.num_method, loaded.drift_share) == ("psi", 0.5)

    bad = unique("policy")
    DriftPolicy(per_column_method={"amount": "no-such-test"}).save(bad)
    with pytest.raises(BlockConfigurationError, match="unknown drift method"):
        DriftPolicy.load_named(bad)


@pytest.mark.usefixtures("prefect_server")
def test_load_named_reports_a_document_that_no_longer_validates() -> None:
    """A dataset document without entity_columns (the field had a default once) names the
    block and the field instead of failing inside the flow."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import BlockDocumentUpdate

    name = unique("dataset")
    DvcDataset(
        name="loans", repo="/data/registry", path="data/loans.parquet", entity_columns=["id"]
    ).save(name)
    with get_client(sync_client=True) as client:
        document = client.read_block_document_by_name(
            name=name, block_type_slug=DvcDataset.get_block_type_slug()
        )
        data = {k: v for k, v in document.data.items() if k != "entity_columns"}
        client.update_block_document(
            document.id, BlockDocumentUpdate(data=data, merge_existing_data=False)
        )
    with pytest.raises(BlockConfigurationError) as caught:
        DvcDataset.load_named(name)
    message = str(caught.value)
    assert message.startswith(f"Block 'driftloop-dvc-dataset/{name}' is misconfigured:")
    assert "entity_columns" in message
