"""An experiment's spend in a NATS KV bucket, for the workers' budget gate (services/llm_worker/budget.py).

Key `<experiment>`: what its recorded (not reused) calls cost and how many each stage made; the
tracker rewrites it after each result of an experiment that has a budget. Key
`<experiment>.<stage>`: what that stage's worker has started or been answered but the tracker has
not recorded yet, at its estimate; the worker rewrites it as its calls start and return, so the
other stage's worker counts them too.
"""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import KeyDeletedError, KeyNotFoundError
from nats.js.kv import KeyValue
from pydantic import BaseModel, Field

from shared.settings import Settings
from shared.topology import ensure_bucket


class Spend(BaseModel):
    cost_usd: float = 0.0
    calls: int = 0
    """Paid calls recorded: the gate's estimate for a call in flight of a model with no price is their mean cost."""
    calls_by_stage: dict[str, int] = Field(default_factory=dict)
    """How many of them each stage made: a worker counts its own answered calls until these show them recorded."""


async def open_spend_bucket(js: JetStreamContext, settings: Settings) -> KeyValue:
    """File storage: a resumed experiment's budget counts what it spent before a restart."""
    config = KeyValueConfig(bucket=settings.spend_bucket, storage=StorageType.FILE, history=1)
    return await ensure_bucket(js, config, settings)


async def _get(kv: KeyValue, key: str) -> bytes | None:
    try:
        return (await kv.get(key)).value
    except (KeyNotFoundError, KeyDeletedError):
        return None


async def read_spend(kv: KeyValue, experiment_id: str) -> Spend:
    return Spend.model_validate_json(await _get(kv, experiment_id) or b"{}")


async def put_spend(kv: KeyValue, experiment_id: str, spend: Spend) -> None:
    await kv.put(experiment_id, spend.model_dump_json().encode("utf-8"))


async def read_unrecorded(kv: KeyValue, experiment_id: str, stage: str) -> float:
    return float(await _get(kv, f"{experiment_id}.{stage}") or 0.0)


async def put_unrecorded(kv: KeyValue, experiment_id: str, stage: str, usd: float) -> None:
    await kv.put(f"{experiment_id}.{stage}", repr(usd).encode("ascii"))
