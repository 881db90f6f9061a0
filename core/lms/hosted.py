"""Hosted and self-hosted LMs: actionable error messages, prices, and OpenAI fine-tuning.

* ``explain_lm_error`` turns DSPy's typed LM errors into one line a user can act on (bad key,
  rate limit, unknown model, unreachable server, ...).
* ``price_per_token`` reads prices from the spec or from LiteLLM's bundled (offline) price map.
* ``StudioOpenAIProvider`` fine-tunes a small-role OpenAI model through OpenAI's fine-tuning API
  with an explicit client (key and base URL of this LM, never a global), reports job progress
  (step, loss) like local fine-tuning, and cancels the remote job when the run is cancelled.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from dspy.clients.provider import Provider, TrainingJob
from dspy.utils import exceptions as dspy_errors

from core.errors import LMError, StepCancelled
from core.lms import catalog
from core.lms.lora.params import train_value
from core.store.secrets import redact

logger = logging.getLogger(__name__)


def explain_lm_error(error: BaseException, model: str | None = None, api_base: str | None = None) -> str:
    """One actionable line for an LM failure, with key-like strings redacted (providers quote keys)."""
    return redact(_explain(error, model, api_base))


def _explain(error: BaseException, model: str | None, api_base: str | None) -> str:
    where = f"the server at {api_base}" if api_base else "the provider"
    name = model or getattr(error, "model", None) or "the LM"
    text = str(error)
    if isinstance(error, dspy_errors.LMAuthError) or "401" in text or "invalid api key" in text.lower():
        return (f"{name}: the API key was rejected by {where}; check the key variable (e.g. OPENAI_API_KEY, "
                f"or a .env file) or type a key on the Models page ({text})")
    if isinstance(error, dspy_errors.LMRateLimitError):
        return (f"{name}: rate limited by {where} even after retries with backoff; lower this LM's parallel "
                f"calls or wait and try again ({text})")
    if isinstance(error, dspy_errors.LMUnsupportedModelError) or (
        isinstance(error, dspy_errors.LMInvalidRequestError | dspy_errors.LMProviderError)
        and ("model" in text.lower() and ("not found" in text.lower() or "does not exist" in text.lower()
                                          or "404" in text))
    ):
        return f"{name}: unknown model at {where}; check the model name (e.g. openai/gpt-4o-mini) ({text})"
    if isinstance(error, dspy_errors.LMTransportError):
        return f"{name}: cannot reach {where}; is the server running and the API base right? ({text})"
    if isinstance(error, dspy_errors.LMTimeoutError):
        return f"{name}: {where} did not answer in time; try again or raise the timeout ({text})"
    if isinstance(error, dspy_errors.LMBillingError):
        return f"{name}: {where} refused the call for billing reasons; check the account's credit ({text})"
    if isinstance(error, dspy_errors.LMServerError):
        return f"{name}: {where} had an internal error; try again later ({text})"
    return f"{type(error).__name__}: {text}"


def price_per_token(model: str, price_in_per_1m: float | None = None,
                    price_out_per_1m: float | None = None) -> tuple[float, float] | None:
    """(input, output) USD per token: the spec's prices, else LiteLLM's bundled price map, else None."""
    if price_in_per_1m is not None and price_out_per_1m is not None:
        return price_in_per_1m / 1e6, price_out_per_1m / 1e6
    try:
        import litellm

        entry = litellm.model_cost.get(model) or litellm.model_cost.get(model.split("/", 1)[-1])
    except Exception:  # noqa: BLE001 - no price is a normal outcome
        entry = None
    if not entry or entry.get("input_cost_per_token") is None:
        return None
    return float(entry["input_cost_per_token"]), float(entry.get("output_cost_per_token") or 0.0)


def base_model_of(model: str) -> str:
    """The model a fine-tune was trained from: OpenAI's own naming
    (``openai/ft:gpt-4o-mini-2024-07-18:org::id`` -> ``openai/gpt-4o-mini-2024-07-18``), else the catalogue's
    ``<base>:ft-<suffix>`` rule (``catalog.base_model_name``); other names unchanged."""
    if "ft:" in model:
        prefix = model.split("ft:")[0]
        return prefix + model.split("ft:")[1].split(":")[0]
    return catalog.base_model_name(model)


# --- OpenAI fine-tuning ----------------------------------------------------------------------------

TERMINAL = {"succeeded", "failed", "cancelled"}


class OpenAITrainingJob(TrainingJob):
    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.remote_id: str | None = None
        self.remote_status: str = "not started"

    def status(self) -> str:
        return self.remote_status


class StudioOpenAIProvider(Provider):
    """Fine-tuning through OpenAI's API (or a compatible server) with progress and cancel."""

    def __init__(self, api_key: str | None = None, base_url: str | None = None, poll_seconds: float = 10.0):
        super().__init__()
        self.finetunable = True
        self.TrainingJob = OpenAITrainingJob
        self._api_key = api_key
        self._base_url = base_url
        self.poll_seconds = poll_seconds
        self._lock = threading.Lock()

    def __deepcopy__(self, memo: dict) -> StudioOpenAIProvider:
        return self

    def __repr__(self) -> str:  # never show the key
        return f"StudioOpenAIProvider(base_url={self._base_url!r})"

    @staticmethod
    def is_provider_model(model: str) -> bool:
        return model.startswith("openai/")

    def client(self) -> Any:
        import openai

        return openai.OpenAI(api_key=self._api_key or None, base_url=self._base_url or None, max_retries=3)

    def finetune(self, job: OpenAITrainingJob, model: str, train_data: list[dict], train_data_format: Any,
                 train_kwargs: dict[str, Any]) -> str:
        progress = train_kwargs.get("progress") or (lambda step, total, loss: None)
        should_stop = train_kwargs.get("should_stop") or (lambda: False)
        poll = float(train_kwargs.get("poll_seconds", self.poll_seconds))
        base = model.removeprefix("openai/")
        hyper = {"n_epochs": train_value(train_kwargs, "epochs"), "batch_size": train_value(train_kwargs, "batch_size")}
        try:
            client = self.client()
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "train.jsonl"
                path.write_text("".join(json.dumps(row) + "\n" for row in train_data), encoding="utf-8")
                with path.open("rb") as f:
                    uploaded = client.files.create(file=f, purpose="fine-tune")
            remote = client.fine_tuning.jobs.create(model=base, training_file=uploaded.id, hyperparameters=hyper)
        except Exception as e:  # noqa: BLE001 - becomes an actionable message
            raise LMError(f"cannot start the OpenAI fine-tuning job for {model}: {explain_lm_error(e, model)}") from e
        job.remote_id = remote.id
        logger.info("OpenAI fine-tuning job %s started for %s", remote.id, base)
        seen: set[str] = set()
        while True:
            if should_stop():
                try:
                    client.fine_tuning.jobs.cancel(remote.id)
                finally:
                    job.remote_status = "cancelled"
                raise StepCancelled(f"fine-tuning cancelled; the OpenAI job {remote.id} was cancelled")
            remote = client.fine_tuning.jobs.retrieve(remote.id)
            job.remote_status = remote.status
            self._report(client, remote.id, seen, progress)
            if remote.status in TERMINAL:
                break
            time.sleep(poll)
        if remote.status != "succeeded":
            reason = getattr(getattr(remote, "error", None), "message", None) or remote.status
            raise LMError(f"the OpenAI fine-tuning job {remote.id} for {model} ended as {remote.status}: {reason}")
        return f"openai/{remote.fine_tuned_model}"

    @staticmethod
    def _report(client: Any, job_id: str, seen: set[str], progress: Any) -> None:
        events = client.fine_tuning.jobs.list_events(fine_tuning_job_id=job_id, limit=50).data
        for event in reversed(events):
            if event.id in seen:
                continue
            seen.add(event.id)
            data = getattr(event, "data", None) or {}
            if isinstance(data, dict) and "step" in data:
                progress(int(data["step"]), int(data.get("total_steps") or 0), float(data.get("train_loss") or 0.0))


# --- OpenAI-compatible endpoints -------------------------------------------------------------------


def check_endpoint(model: str, api_base: str, api_key: str | None, timeout: float = 5.0) -> list[str]:
    """Ask an OpenAI-compatible server which models it serves; raise ``LMError`` naming the problem.

    Catches before a run what a run would discover slowly: an unreachable server, a rejected key,
    a model name the server does not serve. Returns the served model ids.
    """
    import httpx

    url = api_base.rstrip("/") + "/models"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    api_base = redact(api_base)  # for messages: credentials in the URL stay out of text
    try:
        response = httpx.get(url, headers=headers, timeout=timeout, follow_redirects=False)
    except httpx.HTTPError as e:
        raise LMError(redact(f"{model}: cannot reach the server at {api_base}; is it running and is the API base "
                             f"right? ({type(e).__name__}: {e})")) from e
    if response.status_code in (401, 403):
        raise LMError(f"{model}: the API key was rejected by the server at {api_base} (HTTP {response.status_code}); "
                      "check the key variable or type a key on the Models page")
    if response.status_code >= 400:
        raise LMError(redact(f"{model}: the server at {api_base} answered HTTP {response.status_code} to {url}"))
    try:
        served = [str(m.get("id")) for m in response.json().get("data", [])]
    except (ValueError, AttributeError) as e:
        raise LMError(redact(f"{model}: {url} did not return an OpenAI-style model list")) from e
    name = model.split("/", 1)[1] if "/" in model else model
    if served and name not in served:
        raise LMError(f"{model}: unknown model at {api_base}; the server serves {served}")
    return served
