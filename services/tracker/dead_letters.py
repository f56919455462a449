"""A task that JetStream gave up on (max deliveries) becomes a recorded failure, not a silence."""

from __future__ import annotations

import json

from pydantic import ValidationError

from shared.events import TaskCreated, TaskFailed


def failure_from_dead_letter(advisory: bytes, task_payload: bytes | None) -> TaskFailed:
    notice = json.loads(advisory)
    deliveries = int(notice.get("deliveries", 0))
    where = f"{notice.get('stream')}/{notice.get('consumer')} seq {notice.get('stream_seq')}"
    try:
        task = TaskCreated.model_validate_json(task_payload) if task_payload else None
    except ValidationError:
        task = None
    if task is None:
        return TaskFailed(stage="unknown", experiment_id="unknown", task_id=f"dead-letter-{notice.get('stream_seq')}",
                          reason="max_deliveries", message=f"undecodable message redelivered {deliveries} times ({where})",
                          attempts=deliveries)
    return TaskFailed(
        stage=task.stage,
        experiment_id=task.experiment_id,
        task_id=task.task_id,
        reason="max_deliveries",
        message=f"delivered {deliveries} times without being settled ({where})",
        attempts=deliveries,
        tier=task.tier.tier,
        model_id=task.model.id,
        task=task,
    )
