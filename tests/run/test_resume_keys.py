"""Keys typed in the app, given to a resume: only LMs that take a key get one, and a key of no known
shape never reaches a stored error or event."""

from __future__ import annotations

from pathlib import Path

from core.config.defaults import scripted_config_dict
from core.config.schema import parse_config
from core.run import RunManager
from core.store import Store
from core.store.records import RunStatus


def _crashed_run(manager: RunManager, tmp_path: Path) -> int:
    marker = tmp_path / "crashed"
    config = parse_config(scripted_config_dict("classifier", tag="resume-keys", crash_at_round=2,
                                               crash_marker=str(marker)))
    run_id = manager.start(config)
    assert manager.wait(run_id, timeout=120)
    assert manager.store.get_run(run_id).status is RunStatus.FAILED
    return run_id


def test_a_session_key_named_like_an_lm_without_keys_does_not_break_a_resume(tmp_path: Path) -> None:
    manager = RunManager(Store(tmp_path / "runs.db"))
    run_id = _crashed_run(manager, tmp_path)
    secret = "open-sesame-1234"  # no provider's key shape: only registration keeps it out of messages
    # the session typed a key for an LM called "large" (once a hosted LM); here "large" is a scripted LM
    manager.resume(run_id, api_keys={"large": secret, "small": secret})
    assert manager.wait(run_id, timeout=120)
    run = manager.store.get_run(run_id)
    assert run.status is RunStatus.FINISHED, run.error
    assert run.config.typed_api_keys() == {}
    texts = [e.message for e in manager.store.list_events(run_id)] + [run.error or ""]
    assert not [t for t in texts if secret in t]
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
