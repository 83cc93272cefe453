"""Only whole checkpoints are resumed from: trainer_state.json is written last and must parse."""

from __future__ import annotations

import json

from pipeline.tracking.checkpoints import TRAINER_STATE, complete_checkpoints


def test_an_empty_or_torn_trainer_state_is_not_a_complete_checkpoint(tmp_path):
    for step, state in ((5, {"global_step": 5}), (10, None), (15, '{"global_st'), (20, {"global_step": 20})):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if state is not None:
            (folder / TRAINER_STATE).write_text(state if isinstance(state, str) else json.dumps(state))
    (tmp_path / "checkpoint-25").mkdir()
    (tmp_path / "checkpoint-25" / TRAINER_STATE).write_text("")
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["checkpoint-5", "checkpoint-20"]
