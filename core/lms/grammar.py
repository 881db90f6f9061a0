"""GBNF grammars that make the embedded models answer in DSPy's ChatAdapter format.

Zero-shot, the embedded models never write ``[[ ## field ## ]]`` sections by themselves. The
engine therefore reads the output fields (names and types) from the ChatAdapter system message
and constrains generation with a grammar whose only sentences are well-formed answers::

    [[ ## f1 ## ]]\\n<value>\\n\\n[[ ## f2 ## ]]\\n<value>\\n\\n[[ ## completed ## ]]

Each value is constrained by the field's type: Literal -> one of the allowed values, bool ->
True|False, int/float -> a number, list[str] -> a JSON list of short strings, other JSON-typed
fields -> a small JSON value, str -> one line of bounded length (no ``[[``), so a rambling model
cannot run into ``max_tokens``, that starts with a letter (of any script) or a quote. That first
character matters: unconstrained, SmolLM2-135M answered 7 of 10 analyses of the document sample
with the format's own placeholder (``{analysis}``); with markup starts excluded, it found code
fences, ``#`` headings, numbered lists (``1. [## 1]``) and, with digits allowed, section numbers
(``1.1.1.1``, ``1.111111 ireland``: 3 of 6 analyses about the document); starting with a letter, 9
of 10 were. The price, on the embedded models and ``gbnf`` servers only: a ``str`` value cannot start
with a digit or a symbol (``42``, ``$120``); numbers belong in int/float fields. The fine-tuning rows use exactly this format, so inference and
training agree.

Parsing works from the system message alone (no access to the signature object), so every DSPy
code path that formats with the ChatAdapter (Predict, ChainOfThought, demos, optimizers) gets
parseable answers. A system message without a recognisable output-field list gets no grammar.
"""

from __future__ import annotations

import ast
import json
import logging
import re
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # llama_cpp is imported lazily: the parser is used without it
    from llama_cpp import LlamaGrammar

logger = logging.getLogger(__name__)

STR_MAX_CHARS = 160
"""Longest ``str`` value (about 50-60 tokens of English)."""
REASONING_MAX_CHARS = 240
"""Longest ``reasoning`` value (ChainOfThought's extra field)."""
LIST_MAX_ITEMS = 5
LIST_ITEM_MAX_CHARS = 40

KINDS = ("literal", "bool", "int", "float", "list_str", "list_int", "list_float", "json", "str")


@dataclass(frozen=True)
class OutputField:
    """An output field as announced by the ChatAdapter system message."""

    name: str
    kind: str
    """One of ``KINDS``."""
    choices: tuple[str, ...] = ()
    """Allowed values of a ``literal`` field, as the model must write them."""
    type_name: str = ""
    """The annotation as DSPy printed it, e.g. ``Literal['low', 'high']``."""


_OUTPUT_BLOCK = re.compile(
    r"Your output fields are:\n(?P<block>.*?)\nAll interactions will be structured", re.DOTALL
)
_FIELD_LINE = re.compile(r"^(?P<num>\d+)\. `(?P<name>[^`]+)` \(")
_CHOICES_NOTE = re.compile(r"the value you produce must (?:exactly match \(no extra characters\) )?be one of: (.*)$|"
                           r"the value you produce must exactly match \(no extra characters\) one of: (.*)$")


def output_fields_from_system(system: str | None) -> list[OutputField]:
    """Output fields listed by a ChatAdapter system message; ``[]`` when there is no such list.

    Fields are taken from the numbered "Your output fields are:" list (numbered 1, 2, ... in
    order), and kept only when the message's structure section shows their
    ``[[ ## name ## ]]`` header as well.
    """
    if not system:
        return []
    match = _OUTPUT_BLOCK.search(system)
    if not match:
        return []
    fields = []
    for line in match.group("block").split("\n"):
        m = _FIELD_LINE.match(line)
        if not m or int(m.group("num")) != len(fields) + 1:
            continue  # a description line
        type_name = _balanced_parenthesis(line, m.end() - 1)
        if type_name is None:
            continue
        name = m.group("name")
        fields.append(_classify(name, type_name, _note_for(system, name)))
    structure = system[match.end() :]
    if not fields or any(f"[[ ## {f.name} ## ]]" not in structure for f in fields):
        return []
    return fields


def _balanced_parenthesis(text: str, start: int) -> str | None:
    """The text inside the parenthesis opened at ``text[start]``, respecting quotes and nesting."""
    depth, quote = 0, None
    for i in range(start, len(text)):
        ch = text[i]
        if quote:
            if ch == "\\":
                continue
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i]
    return None


def _note_for(system: str, name: str) -> str:
    """The ``# note: ...`` that follows ``{name}`` in the structure section, if any."""
    m = re.search(r"\{" + re.escape(name) + r"\}[ \t]+# note: ([^\n]*)", system)
    return m.group(1) if m else ""


def literal_choices(type_name: str) -> tuple[str, ...] | None:
    """The values of ``Literal[...]`` as DSPy expects them written, or None if not a Literal."""
    if not (type_name.startswith("Literal[") and type_name.endswith("]")):
        return None
    try:
        node = ast.parse(type_name, mode="eval").body
    except SyntaxError:
        return None
    elements = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]  # type: ignore[attr-defined]
    values = []
    for element in elements:
        if not isinstance(element, ast.Constant):
            return None
        values.append(str(element.value))
    return tuple(values)


def _classify(name: str, type_name: str, note: str) -> OutputField:
    """Map DSPy's printed annotation (and the structure note) to a grammar kind."""
    simple = {
        "str": "str",
        "bool": "bool",
        "int": "int",
        "float": "float",
        "list[str]": "list_str",
        "List[str]": "list_str",
        "list[int]": "list_int",
        "list[float]": "list_float",
        "Union[str, NoneType]": "str",
        "Optional[str]": "str",
    }
    if type_name in simple:
        return OutputField(name, simple[type_name], type_name=type_name)
    choices = literal_choices(type_name)
    note_match = _CHOICES_NOTE.match(note)
    if choices is None and note_match:  # enums print their members only here
        listed = note_match.group(1) or note_match.group(2)
        choices = tuple(v.strip() for v in listed.split(";") if v.strip())
    if choices:
        return OutputField(name, "literal", choices, type_name)
    if "JSON schema" in note:
        return OutputField(name, "json", type_name=type_name)
    return OutputField(name, "str", type_name=type_name)


# --- grammar text ---------------------------------------------------------------------------------

_COMMON_RULES = r"""
ws ::= [ ]?
int ::= "-"? [0-9]{1,12}
float ::= "-"? [0-9]{1,12} ("." [0-9]{1,6})?
jstr ::= "\"" [^"\\\n]{0,LIST_ITEM} "\""
jbool ::= "true" | "false"
jnum ::= "-"? [0-9]{1,12} ("." [0-9]{1,6})?
jscalar ::= jstr | jnum | jbool | "null"
jflat ::= jscalar | "[" ws (jscalar ("," ws jscalar){0,LIST_MAX})? ws "]"
jvalue ::= jflat | "{" ws (jstr ":" ws jflat ("," ws jstr ":" ws jflat){0,LIST_MAX})? ws "}"
"""


def _gbnf_literal(text: str) -> str:
    """A GBNF string literal for ``text``."""
    return json.dumps(text, ensure_ascii=False)


TEXT_FIRST_CHAR = r'[A-Za-z"\u00C0-\U0010FFFF]'
"""A free-text value starts with an ASCII letter, a quote, or any non-ASCII character (letters of
other scripts): never with ``{`` (the format's placeholders), markup, a digit or a space."""


def _text_rule(max_chars: int) -> str:
    """One line of 1..max_chars characters that never contains ``[[`` and starts like prose."""
    return f'{TEXT_FIRST_CHAR} ([^\\n\\[] | "[" [^\\n\\[]){{0,{max_chars - 1}}}'


def _value_rule(field: OutputField) -> str:
    if field.kind == "literal":
        return " | ".join(_gbnf_literal(c) for c in field.choices)
    if field.kind == "bool":
        return '"True" | "False"'
    if field.kind in ("int", "float"):
        return field.kind
    if field.kind in ("list_str", "list_int", "list_float"):
        item = {"list_str": "jstr", "list_int": "int", "list_float": "float"}[field.kind]
        return f'"[" ws ({item} ("," ws {item}){{0,{LIST_MAX_ITEMS - 1}}})? "]"'
    if field.kind == "json":
        return "jvalue"
    limit = REASONING_MAX_CHARS if field.name == "reasoning" else STR_MAX_CHARS
    return _text_rule(limit)


def build_grammar(fields: list[OutputField]) -> str:
    """GBNF text whose sentences are exactly the ChatAdapter answers for ``fields``."""
    if not fields:
        raise ValueError("build_grammar needs at least one output field")
    sequence = []
    rules = []
    for i, field in enumerate(fields):
        header = ("" if i == 0 else "\n\n") + f"[[ ## {field.name} ## ]]\n"
        sequence += [_gbnf_literal(header), f"v{i}"]
        rules.append(f"v{i} ::= {_value_rule(field)}")
    sequence.append(_gbnf_literal("\n\n[[ ## completed ## ]]"))
    common = _COMMON_RULES.replace("LIST_ITEM", str(LIST_ITEM_MAX_CHARS)).replace(
        "LIST_MAX", str(LIST_MAX_ITEMS - 1)
    )
    return "root ::= " + " ".join(sequence) + "\n" + "\n".join(rules) + common


def grammar_for_system(system: str | None) -> str | None:
    """The grammar text for a ChatAdapter system message, None when it lists no output fields."""
    fields = output_fields_from_system(system)
    return build_grammar(fields) if fields else None


_compiled: dict[str, LlamaGrammar] = {}
_checked: set[tuple[str, int]] = set()
_compiled_lock = threading.Lock()


def compile_grammar(text: str, llama: Any = None) -> LlamaGrammar:
    """A ``LlamaGrammar`` for ``text``, cached by text.

    ``LlamaGrammar.from_string`` does not parse the text; llama.cpp parses it when the sampler
    is built and crashes on a NULL sampler. With ``llama`` given, the grammar is parsed once per
    (text, model) against the model's vocabulary first, and ValueError is raised if invalid.
    """
    with _compiled_lock:
        compiled = _compiled.get(text)
        if compiled is None:
            from llama_cpp import LlamaGrammar

            compiled = LlamaGrammar.from_string(text, verbose=False)
            _compiled[text] = compiled
        if llama is not None and (text, id(llama)) not in _checked:
            check_grammar(text, llama)
            _checked.add((text, id(llama)))
        return compiled


def check_grammar(text: str, llama: Any) -> None:
    """Parse ``text`` with llama.cpp for ``llama``'s vocabulary; ValueError when it is invalid."""
    import llama_cpp

    sampler = llama_cpp.llama_sampler_init_grammar(llama._model.vocab, text.encode("utf-8"), b"root")
    if not sampler:
        raise ValueError(f"llama.cpp cannot parse the grammar:\n{text}")
    llama_cpp.llama_sampler_free(sampler)
