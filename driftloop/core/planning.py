"""Which revision a training run trains on, and whether it needs to train at all.

Pure rules, applied by the `plan-training` task before a run touches any data:

- **Latest wins.** A run started by automation (new data, drift, the schedule, the service's
  first start) trains the dataset's newest revision. Queued behind a running training, five
  back-to-back revisions become one training on the newest; the runs for the older ones say
  which revision superseded them. A run a person started for an explicit revision trains
  exactly that revision.
- **No duplicates.** A model is determined by its data (DVC md5), its features (Feast
  fingerprint), its configuration (search, split, quality, seed, gate) and the training code.
  If a version with the same fingerprint was already decided (promoted or rejected), training
  again would register an identical model: the run is skipped and says which version it was.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from driftloop.core import names
from driftloop.core.contracts import DatasetVersion


def is_requested_by_person(reason: str) -> bool:
    """A person started the run (from the UI or the API) rather than an event or schedule."""
    return reason == names.REASON_MANUAL


def choose_revision(
    reason: str, rev: str | None, requested: DatasetVersion, newest: DatasetVersion
) -> tuple[DatasetVersion, str | None]:
    """The revision to train on, and why the requested one gave way, if it did.

    Example: a run for revision ``a1b2`` started by `driftloop.dataset.updated`, when the
    dataset's newest revision is ``c3d4``, trains ``c3d4`` and reports "revision a1b2 was
    superseded by the newer revision c3d4 (latest wins)". Started by a person for ``a1b2``,
    it trains ``a1b2``.
    """
    if requested.commit == newest.commit:
        return requested, None
    if rev is not None and is_requested_by_person(reason):
        return requested, None
    return newest, superseded_message(requested.commit, newest.commit)


def superseded_message(older: str, newer: str) -> str:
    """How a revision that gave way to a newer one is recorded, on its run or in its ledger."""
    return f"revision {older[:8]} was superseded by the newer revision {newer[:8]} (latest wins)"


def training_fingerprint(
    dataset_md5: str, features_fingerprint: str, config: dict[str, Any], code: str
) -> str:
    """Hash of everything that determines a trained model and its verdict.

    The same inputs give the same hex digest in any process; any change to the data's md5,
    the feature fingerprint, a configuration value or the code hash gives another.
    """
    payload = json.dumps(
        {"data": dataset_md5, "features": features_fingerprint, "config": config, "code": code},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def skip_reason(
    model_name: str, version: str | None, decision: str | None, dataset: DatasetVersion
) -> str | None:
    """Why a run need not train: a version with its fingerprint was already decided.

    A version with no final decision (its run was interrupted, or its promotion rolled back)
    does not count: the run goes through again, mostly from its cache, and finishes it.
    """
    if version is None or decision not in names.FINAL_DECISIONS:
        return None
    return (
        f"already trained: {model_name} v{version} was trained on exactly this data "
        f"({dataset.short}), features, configuration and code, and was {decision}; "
        "nothing new to train or register"
    )


def new_labels_reason(
    champion_version: str, newest: DatasetVersion, trained: tuple[str, str | None] | None
) -> tuple[bool, str]:
    """Has the dataset labeled data no training has used yet? And the reason, in words.

    `trained` is the newest version fit on the newest revision's content (its md5), with its
    decision, if there is one. Then a retraining cannot change anything, whatever the champion
    is. Example: champion v2 was fit on the newest revision ``eb4d88c3``: (False, "no labeled
    data newer than champion v2 (commit eb4d88c3)").
    """
    if trained is None:
        return True, f"{newest.short} holds labeled data no version was trained on"
    version, decision = trained
    if version == champion_version:
        return False, (
            f"no labeled data newer than champion v{champion_version} (commit {newest.commit[:8]})"
        )
    return False, (
        f"no labeled data newer than v{version} ({decision or 'undecided'}), trained on commit "
        f"{newest.commit[:8]}; champion v{champion_version} stays"
    )
