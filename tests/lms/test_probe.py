"""**Test connection** takes the typed LM spec: a key typed in the session joins a copy of a LiteLLM
spec as a secret (the endpoint sees it, the caller's spec does not keep it), nothing is re-parsed
from a dict, and failures are messages."""

from __future__ import annotations

import pytest

from core.config.schema import LiteLLMSpec
from core.document import new_document, scripted_lms
from core.errors import LMError
from core.lms.probe import check_connection
from tests.fake_openai import FakeOpenAI

TYPED = "sk-typed-PROBE-0123456789abcdef"


def test_the_scripted_lm_answers() -> None:
    spec = scripted_lms("classifier")["large"]
    assert check_connection("large", spec).strip() != ""


def test_a_typed_key_reaches_the_endpoint_on_a_copy_of_the_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FakeOpenAI(api_key=TYPED) as server:
        spec = LiteLLMSpec(kind="litellm", model="openai/gpt-4o-mini", api_base=server.base_url)
        with pytest.raises(LMError, match="API key was rejected"):
            check_connection("hosted", spec)  # no key at all
        with pytest.raises(LMError, match="API key was rejected"):
            check_connection("hosted", spec, "sk-wrong-0123456789abcdef")
        # the typed key is accepted: the fake serves no model list, so the check stops at its 404
        with pytest.raises(LMError, match="answered HTTP 404") as caught:
            check_connection("hosted", spec, TYPED)
    assert TYPED not in str(caught.value)
    assert spec.api_key is None  # the caller's spec never holds the key


def test_a_dumped_spec_is_refused() -> None:
    spec = new_document().lms["large"]
    with pytest.raises(TypeError, match="takes a typed LM spec, got dict"):
        check_connection("large", spec.model_dump())  # type: ignore[arg-type]
