"""Shared pieces of the security tests: a finished run without the runner, a recording listener."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from core.config.defaults import scripted_config_dict
from core.config.schema import parse_config
from core.lms.registry import build_lm
from core.programs import build_program
from core.store import Store
from core.store.records import RunOutcome, RunStatus


def finished_run(tmp_path: Path, doc: dict[str, Any] | None = None) -> tuple[Store, int]:
    """A store holding one finished run whose best program is the unoptimized program (scripted LMs)."""
    config = parse_config(doc or scripted_config_dict("analyze_classify", tag="security"))
    store = Store(tmp_path / "runs.db")
    run_id = store.create_run("security", config)
    program = build_program(config.program, allow_user_code=config.allow_user_code)
    for name, predictor in program.named_predictors():
        spec = config.lms[config.predictors[name].lm]
        predictor.lm = build_lm(name, spec, allow_user_code=config.allow_user_code)
    best = tmp_path / f"best-{run_id}.json"
    program.save(str(best))
    store.add_artifact(run_id, "best_program", best)
    store.finish_run(run_id, RunOutcome(RunStatus.FINISHED, best_strategy="p", best_score=50.0, baseline_score=40.0,
                     test_baseline_score=None, test_best_score=None, flagged=False))
    return store, run_id


class Listener:
    """A loopback HTTP server that records every request (path and headers) and answers 500."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _record(self) -> None:
                listener.requests.append({"path": self.path, "headers": dict(self.headers)})
                self.send_response(500)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = _record  # noqa: N815

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> Listener:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
