"""Run page render time with a hosted LM configured vs none (AppTest reruns, loopback servers only).

    .venv/bin/python bench/run_page_render.py [--reruns 10]

Three configurations on the scripted LMs: no hosted LM; a hosted LM whose ``api_base`` is a loopback
server answering at once; one whose server takes 3 s to answer. A render must not contact either
server, so all three should take the same time. Prints the medians (seconds) and the requests each
server received, as JSON on the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


class Server:
    """A loopback HTTP server that counts requests and answers 500 after ``delay`` seconds."""

    def __init__(self, delay: float) -> None:
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                server.requests += 1
                time.sleep(delay)
                self.send_response(500)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"


def document(api_base: str | None) -> Any:
    from core.document import add_litellm, assign_predictors, new_document, use_scripted

    doc = use_scripted(new_document(), True)
    if api_base:
        doc = add_litellm(doc, "hosted", {"model": "openai/smol", "api_base": api_base})
        large = next(p for p, a in doc.predictors.items() if a.role == "large")
        doc, _ = assign_predictors(doc, [{"predictor": large, "lm": "hosted", "role": "large"}])
    return doc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reruns", type=int, default=10)
    args = parser.parse_args()
    os.environ.setdefault("STUDIO_HOME", tempfile.mkdtemp(prefix="bt-render-"))
    os.chdir(ROOT)
    from streamlit.testing.v1 import AppTest

    fast, slow = Server(0.0), Server(3.0)
    cases = {"no_hosted_lm": None, "hosted_lm_fast_server": fast.url, "hosted_lm_slow_server": slow.url}
    pages = {}
    for name, url in cases.items():
        at = AppTest.from_file(str(ROOT / "pages" / "run.py"), default_timeout=60)
        at.session_state["config_doc"] = document(url)
        at.session_state["doc_rev"] = 0
        at.run()
        pages[name] = at
    seconds: dict[str, list[float]] = {name: [] for name in pages}
    for _ in range(args.reruns):
        for name, at in pages.items():
            started = time.perf_counter()
            at.run()
            seconds[name].append(time.perf_counter() - started)
    result = {"reruns": args.reruns,
              "median_s": {name: round(statistics.median(v), 4) for name, v in seconds.items()},
              "server_requests": {"fast": fast.requests, "slow": slow.requests}}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
