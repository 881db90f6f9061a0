"""Output-field extraction from real ChatAdapter system messages, and grammar compilation."""

from __future__ import annotations

import enum
from typing import Literal

import dspy
import llama_cpp
import pytest

from core.lms import catalog
from core.lms.grammar import OutputField, build_grammar, check_grammar, compile_grammar, grammar_for_system
from core.lms.grammar import output_fields_from_system as fields_of


class Ticket(dspy.Signature):
    """Classify the support ticket."""

    ticket: str = dspy.InputField()
    intent: Literal["billing", "bug", "account", "feature_request"] = dspy.OutputField(
        desc="what the customer wants (a description with (parentheses) and `ticks`)"
    )
    urgency: Literal["low", "high"] = dspy.OutputField()


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


def system_of(signature, demos=()) -> str:
    adapter = dspy.ChatAdapter(use_json_adapter_fallback=False)
    inputs = {name: "x" for name in signature.input_fields}
    return adapter.format(signature, demos=list(demos), inputs=inputs)[0]["content"]


def test_predict_literal_fields():
    fields = fields_of(system_of(dspy.Predict(Ticket).signature))
    assert [f.name for f in fields] == ["intent", "urgency"]
    assert fields[0].kind == "literal"
    assert fields[0].choices == ("billing", "bug", "account", "feature_request")
    assert fields[1].choices == ("low", "high")


def test_chain_of_thought_adds_reasoning_first():
    fields = fields_of(system_of(dspy.ChainOfThought(Ticket).predict.signature))
    assert [(f.name, f.kind) for f in fields] == [("reasoning", "str"), ("intent", "literal"), ("urgency", "literal")]


def test_scalar_and_list_kinds():
    signature = dspy.Signature("question -> answers: list[str], ok: bool, n: int, score: float, note: str")
    kinds = {f.name: f.kind for f in fields_of(system_of(signature))}
    assert kinds == {"answers": "list_str", "ok": "bool", "n": "int", "score": "float", "note": "str"}


def test_json_and_enum_kinds():
    class Other(dspy.Signature):
        q: str = dspy.InputField()
        counts: dict[str, int] = dspy.OutputField()
        numbers: list[int] = dspy.OutputField()
        color: Color = dspy.OutputField()
        maybe: str | None = dspy.OutputField()

    fields = {f.name: f for f in fields_of(system_of(Other))}
    assert fields["counts"].kind == "json"
    assert fields["numbers"].kind == "list_int"
    assert fields["color"].kind == "literal" and set(fields["color"].choices) == {"red", "green"}
    assert fields["maybe"].kind == "str"


def test_demos_do_not_change_the_fields():
    demo = dspy.Example(ticket="t", intent="bug", urgency="low")
    assert fields_of(system_of(Ticket, demos=[demo])) == fields_of(system_of(Ticket))


@pytest.mark.parametrize("system", [None, "", "You are a helpful assistant.", "Your output fields are:\n1. `a` (str):"])
def test_no_chatadapter_list_means_no_grammar(system):
    assert fields_of(system) == []
    assert grammar_for_system(system) is None


def test_grammar_text_shape():
    text = build_grammar([OutputField("label", "literal", ("a", "b")), OutputField("why", "str")])
    assert text.startswith('root ::= "[[ ## label ## ]]\\n" v0 "\\n\\n[[ ## why ## ]]\\n" v1')
    assert '"\\n\\n[[ ## completed ## ]]"' in text
    assert 'v0 ::= "a" | "b"' in text
    with pytest.raises(ValueError):
        build_grammar([])


@pytest.fixture(scope="module")
def vocab_llama():
    return llama_cpp.Llama(model_path=str(catalog.gguf_path("smollm2-135m")), vocab_only=True, verbose=False)


def test_every_kind_compiles_with_llama_cpp(vocab_llama):
    fields = [
        OutputField("reasoning", "str"),
        OutputField("label", "literal", ("billing", "bug", 'say "hi"')),
        OutputField("ok", "bool"),
        OutputField("n", "int"),
        OutputField("x", "float"),
        OutputField("tags", "list_str"),
        OutputField("ids", "list_int"),
        OutputField("w", "list_float"),
        OutputField("obj", "json"),
        OutputField("note", "str"),
    ]
    text = build_grammar(fields)
    check_grammar(text, vocab_llama)
    assert isinstance(compile_grammar(text, vocab_llama), llama_cpp.LlamaGrammar)
    assert compile_grammar(text) is compile_grammar(text)  # cached by text


def test_real_chatadapter_grammars_compile(vocab_llama):
    for signature in (Ticket, dspy.ChainOfThought(Ticket).predict.signature, dspy.Signature("q -> a: list[str], b: bool")):
        check_grammar(grammar_for_system(system_of(signature)), vocab_llama)


def test_invalid_grammar_is_refused(vocab_llama):
    with pytest.raises(ValueError, match="cannot parse"):
        check_grammar("root ::= undefined_rule", vocab_llama)


def test_free_text_never_starts_like_markup_or_a_list(vocab_llama):
    """The text rule, run by llama.cpp's own grammar engine over candidate answers."""
    import ctypes

    text = build_grammar([OutputField("analysis", "str")])
    check_grammar(text, vocab_llama)

    def accepts(value: str) -> bool:
        sampler = llama_cpp.llama_sampler_init_grammar(vocab_llama._model.vocab, text.encode(), b"root")
        try:
            answer = f"[[ ## analysis ## ]]\n{value}\n\n[[ ## completed ## ]]"
            for token in vocab_llama.tokenize(answer.encode(), add_bos=False, special=False):
                data = (llama_cpp.llama_token_data * 1)(llama_cpp.llama_token_data(token, 0.0, 0.0))
                array = llama_cpp.llama_token_data_array(data, 1, -1, False)
                llama_cpp.llama_sampler_apply(sampler, ctypes.byref(array))
                if array.data[0].logit == float("-inf"):
                    return False
                llama_cpp.llama_sampler_accept(sampler, token)
            return True
        finally:
            llama_cpp.llama_sampler_free(sampler)

    for good in ("Sales fell 55% in the quarter.", "\"Quoted\" start", "Über alles", "Ünal's 3 items"):
        assert accepts(good), good
    for bad in ("{analysis}", "```python", "# Heading", "1. [## 1]", "2) second", "1.1.1.1", " leading space",
                "* bullet", "> quote", "[## x]", "| table |",
                "42", "$120 refund"):  # the price: numbers belong in int/float fields
        assert not accepts(bad), bad
