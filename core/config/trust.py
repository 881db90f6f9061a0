"""What in a configuration document would run code or read a file, shown before anything does.

A configuration can come from elsewhere (uploaded to the app). Its own ``allow_user_code: true`` is
a claim, not the user's consent: ``untrusted_document`` turns it off, and the pages list what would
run (``user_code_items``) until the user ticks the opt-in for this configuration on the Program page.
Likewise a ``file`` data source the user did not pick in this session is shown with its resolved path
(``file_to_review``) and read only after the user allows it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from core.config.schema import FactoryLMSpec, FileSource, LiteLLMSpec, RunDraft
from core.errors import shown

USER_CODE_HINT = "Nothing of it has run. Review it, then tick 'I trust this code' on the Program page to allow it."


def user_code_items(doc: RunDraft) -> list[str]:
    """One line per piece of the document that runs code on this machine (a program file, a factory)."""
    items = []
    program = doc.program
    if program.kind == "user_file":
        path = Path(program.path).expanduser()
        cls = f" (class {program.class_name})" if program.class_name else ""
        items.append(f"the program file {path.resolve() if path.parts else path}{cls} is imported and run")
    for name, spec in doc.lms.items():
        if isinstance(spec, FactoryLMSpec) and not spec.is_builtin:
            options = json.dumps(spec.options, sort_keys=True, default=str)[:200]
            items.append(f"LM {shown(name)} calls the factory {shown(spec.factory, quotes=False)} with options {options}")
    return items


def user_code_notice(doc: RunDraft) -> str | None:
    """A one-line notice when the document runs code that the user has not allowed yet, else None."""
    items = user_code_items(doc)
    if not items or doc.allow_user_code:
        return None
    return "This configuration runs code on this machine: " + "; ".join(items) + ". " + USER_CODE_HINT


def untrusted_document(doc: RunDraft) -> RunDraft:
    """A document from elsewhere with its own consent removed: user code waits for the user's opt-in."""
    return with_user_code(doc, False) if user_code_items(doc) else doc


def resolved_file(doc: RunDraft, base_dir: Path | None = None) -> Path | None:
    """The absolute path a ``file`` data source reads (relative paths resolve against ``base_dir``
    or the working folder), or None for a bundled sample."""
    source = doc.data.source
    if not isinstance(source, FileSource):
        return None
    path = Path(source.path).expanduser()
    if not path.is_absolute():
        path = (base_dir or Path.cwd()) / path
    return path.resolve()


def file_to_review(doc: RunDraft, allowed: Iterable[str]) -> Path | None:
    """The resolved path of a ``file`` source the user has not allowed in this session, else None."""
    path = resolved_file(doc)
    return path if path is not None and str(path) not in set(allowed) else None


def with_user_code(doc: RunDraft, allowed: bool) -> RunDraft:
    """The document with the user's opt-in for its code given (or withdrawn)."""
    return doc.model_copy(update={"allow_user_code": bool(allowed)})


# --- who may use the app ---------------------------------------------------------------------------

# Only these binds serve this machine alone without a token. Anything else (0.0.0.0, a LAN address,
# a host name, even another loopback alias such as 127.0.0.2, or no address: Streamlit then listens on
# every interface) asks for STUDIO_TOKEN: a narrow list is easy to reason about.
LOCAL_ADDRESSES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
TOKEN_ENV = "STUDIO_TOKEN"
MIN_TOKEN_CHARS = 16


def needs_token(address: str | None) -> bool:
    """True when the app is bound beyond this machine's default loopback address."""
    return (address or "").strip().lower() not in LOCAL_ADDRESSES


def serve_problem(address: str | None, token: str | None) -> str | None:
    """Why the app must not serve at ``address`` with ``token`` (from ``STUDIO_TOKEN``), or None."""
    if not needs_token(address):
        return None
    shown = address or "every network interface (no server.address set)"
    if not token:
        return (f"BetterTogether Studio refuses to serve on {shown} without a token: anyone who can reach it "
                f"could start runs and read files. Set {TOKEN_ENV} to a secret of at least {MIN_TOKEN_CHARS} "
                "characters, or bind to localhost (--server.address localhost).")
    if len(token) < MIN_TOKEN_CHARS:
        return (f"{TOKEN_ENV} is {len(token)} characters; serving on {shown} needs a token of at least "
                f"{MIN_TOKEN_CHARS} characters")
    return None


def token_matches(given: str | None, expected: str | None) -> bool:
    """Constant-time comparison of a typed token with ``STUDIO_TOKEN``."""
    import hmac

    return bool(given and expected) and hmac.compare_digest(str(given).encode(), str(expected).encode())


def endpoints(doc: RunDraft) -> list[str]:
    """The ``api_base`` URLs the document's LMs send requests (and keys) to, credentials redacted."""
    from core.store.secrets import redact

    found = {spec.api_base for spec in doc.lms.values() if isinstance(spec, LiteLLMSpec) and spec.api_base}
    return sorted(redact(url) for url in found)
