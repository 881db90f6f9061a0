"""A local stand-in for OpenAI's files + fine-tuning endpoints (a test double: no network, no cost).

It implements just what ``StudioOpenAIProvider`` calls: ``POST /v1/files``, ``POST /v1/fine_tuning/jobs``,
``GET /v1/fine_tuning/jobs/{id}``, ``GET /v1/fine_tuning/jobs/{id}/events`` and
``POST /v1/fine_tuning/jobs/{id}/cancel``. A job advances one training step per status poll and
reports step/loss events like OpenAI's ``metrics`` events.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeOpenAI:
    def __init__(self, total_steps: int = 3, fail: bool = False, api_key: str = "sk-fake"):
        self.total_steps = total_steps
        self.fail = fail
        self.api_key = api_key
        self.jobs: dict[str, dict[str, Any]] = {}
        self.uploads: list[bytes] = []
        self.cancelled: list[str] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()

    def _job_view(self, job: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": job["id"], "object": "fine_tuning.job", "model": job["model"], "status": job["status"],
            "created_at": 0, "fine_tuned_model": job.get("fine_tuned_model"), "training_file": job["file"],
            "hyperparameters": job["hyperparameters"], "organization_id": "org", "result_files": [],
            "seed": 0, "trained_tokens": None, "validation_file": None, "finished_at": None,
            "error": {"code": "bad", "message": "training data rejected", "param": None} if job["status"] == "failed"
            else None,
        }

    def _advance(self, job: dict[str, Any]) -> None:
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return
        job["status"] = "running"
        job["step"] += 1
        job["events"].append({"id": f"ev-{job['id']}-{job['step']}", "object": "fine_tuning.job.event",
                              "created_at": int(time.time()), "level": "info", "type": "metrics",
                              "message": f"Step {job['step']}/{self.total_steps}",
                              "data": {"step": job["step"], "total_steps": self.total_steps,
                                       "train_loss": round(1.0 / job["step"], 4)}})
        if job["step"] >= self.total_steps:
            job["status"] = "failed" if self.fail else "succeeded"
            job["fine_tuned_model"] = None if self.fail else f"ft:{job['model']}:studio::{job['id']}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return None

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorised(self) -> bool:
                if self.headers.get("Authorization") != f"Bearer {fake.api_key}":
                    self._send(401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error",
                                               "code": "invalid_api_key"}})
                    return False
                return True

            def do_POST(self) -> None:  # noqa: N802
                if not self._authorised():
                    return
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path == "/v1/files":
                    fake.uploads.append(body)
                    self._send(200, {"id": f"file-{len(fake.uploads)}", "object": "file", "bytes": len(body),
                                     "created_at": 0, "filename": "train.jsonl", "purpose": "fine-tune",
                                     "status": "processed"})
                elif self.path == "/v1/fine_tuning/jobs":
                    request = json.loads(body)
                    job_id = f"ftjob-{len(fake.jobs) + 1}"
                    fake.jobs[job_id] = {"id": job_id, "model": request["model"], "file": request["training_file"],
                                         "hyperparameters": request.get("hyperparameters") or {},
                                         "status": "queued", "step": 0, "events": []}
                    self._send(200, fake._job_view(fake.jobs[job_id]))
                elif self.path.endswith("/cancel"):
                    job = fake.jobs[self.path.split("/")[-2]]
                    job["status"] = "cancelled"
                    fake.cancelled.append(job["id"])
                    self._send(200, fake._job_view(job))
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_GET(self) -> None:  # noqa: N802
                if not self._authorised():
                    return
                parts = self.path.split("?")[0].strip("/").split("/")
                if len(parts) == 4 and parts[1] == "fine_tuning":
                    job = fake.jobs[parts[3]]
                    fake._advance(job)
                    self._send(200, fake._job_view(job))
                elif len(parts) == 5 and parts[4] == "events":
                    job = fake.jobs[parts[3]]
                    self._send(200, {"object": "list", "data": list(reversed(job["events"])), "has_more": False})
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

        return Handler
