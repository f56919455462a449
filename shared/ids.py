"""Stable ids for combos and tasks.

The combo id is bit-exact with the original pipeline so results from both join. Task ids are
readable compositions of their parts, but nothing ever parses them back: messages and tables
carry every part as its own field.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

from shared.events import SAFE_ID_REGEX

COMBO_ID_VERSION = "v1"
SAFE_ID_PATTERN = re.compile(SAFE_ID_REGEX)
SAFE_ID_RULE = "use only letters, digits, '_' and '-' (ids become file names and NATS subject tokens)"
MAX_ID_LENGTH = 64
"""Every id (concept, template, model, tier, experiment) is at most this long."""
MAX_NAME_BYTES = 255
"""The longest file name ext4, APFS and NTFS all take."""
LONGEST_NAME_EXTRA = len(".") + len(".") + len(".12345678") + len(".score.json") + len(".12345678.tmp")
"""What the tracker adds around `<task_id>` and `<experiment_id>` in its longest file name: the
temporary file (`.<name>.<8 random>.tmp`, shared/files.py) of the last-resort artifact name
`<task_id>.<experiment_id>.<sha8>.score.json` (services/tracker/artifacts.py)."""


def is_safe_id(value: str) -> bool:
    """Safe as a file name and as one NATS subject token: no '/', '.', spaces or wildcards."""
    return bool(SAFE_ID_PATTERN.fullmatch(value))


def longest_file_name_bytes(task_id: str, experiment_id_length: int = MAX_ID_LENGTH) -> int:
    """The longest file name the tracker may derive from this task id, for an experiment id of
    `experiment_id_length` characters (by default the longest an experiment id may be, so a plan
    that fits fits under every experiment id)."""
    return len(task_id.encode("utf-8")) + experiment_id_length + LONGEST_NAME_EXTRA


def combo_id(concept_ids: Iterable[str], description_level: str, k_max: int) -> str:
    members = "|".join(sorted(concept_ids))
    digest = hashlib.sha256(f"{members}|{description_level}|{k_max}".encode()).hexdigest()
    return f"combo_{COMBO_ID_VERSION}_{digest[:12]}"


def generation_task_id(combo: str, template_id: str, model_id: str, replicate: int = 1, replicates: int = 1) -> str:
    """Without replicates the id keeps the original pipeline's form, so old results still join."""
    base = f"{combo}_{template_id}_{model_id}"
    return f"{base}_r{replicate}" if replicates > 1 else base


def evaluation_task_id(generation_task: str, template_id: str, model_id: str) -> str:
    return f"{generation_task}_{template_id}_{model_id}"
