"""The built-in templates: fixed lists of stages, each with a sample dataset."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from core.programs.stages import Stage

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Template:
    """A built-in program with the sample dataset it comes with.

    ``default_mapping`` maps each program field (inputs and labels) to a column of ``sample``.
    """

    key: str
    title: str
    description: str
    stages: list[Stage]
    sample: str
    input_fields: tuple[str, ...]
    label_fields: tuple[str, ...]
    default_mapping: dict[str, str] = field(default_factory=dict)
    # stages whose predictors get the small role (fine-tuned) by default; empty: the last stage only
    small_stages: tuple[str, ...] = ()

    def small_predictors(self, predictor_names: list[str]) -> list[str]:
        """Which of the program's predictors (``analyze.predict`` belongs to stage ``analyze``) start small."""
        if not self.small_stages:
            return predictor_names[-1:]
        return [n for n in predictor_names if n.split(".")[0] in self.small_stages]


TEMPLATES: dict[str, Template] = {
    "analyze_classify": Template(
        key="analyze_classify",
        title="Analyze, then classify",
        description=(
            "A reasoning step analyses a document and lists key findings; a classification step "
            "turns them into a category and a risk level."
        ),
        stages=[
            Stage(
                name="analyze",
                module="ChainOfThought",
                signature="document -> analysis: str, key_findings: list[str]",
                instructions=(
                    "Read the document carefully and write a concise analysis together with its "
                    "most important findings."
                ),
            ),
            Stage(
                name="classify",
                module="Predict",
                signature="analysis, key_findings -> category: str, risk_level: str",
                instructions=(
                    "From the analysis and key findings, assign the document's category and its "
                    "risk level (low, medium or high)."
                ),
            ),
        ],
        sample="documents.csv",
        input_fields=("document",),
        label_fields=("category", "risk_level"),
        default_mapping={"document": "document", "category": "category", "risk_level": "risk_level"},
        # Both stages are fine-tuned by default. The tutorial keeps the analysis on a large prompted LM
        # (GPT-4o); the embedded default has no larger model than the small one (SmolLM2-135M in both
        # roles), and prompted, its analyses do not carry the document's category or risk: validation
        # stayed at chance (bench/quality.py, docs/benchmarks.md). Fine-tuned on hinted rows (trace source 'auto'
        # -> 'hinted' for analyze, 'gold' for classify), they do. With a larger LM, give analyze the
        # large role on the Program page.
        small_stages=("analyze", "classify"),
    ),
    "classifier": Template(
        key="classifier",
        title="Text classifier",
        description="A single step that assigns a label to a piece of text.",
        stages=[
            Stage(
                name="classify",
                module="Predict",
                signature="text -> label: str",
                instructions="Classify the text and answer with the single label that fits it best.",
            ),
        ],
        sample="sentiment.json",
        input_fields=("text",),
        label_fields=("label",),
        default_mapping={"text": "text", "label": "label"},
    ),
    "support_triage": Template(
        key="support_triage",
        title="Support ticket triage",
        description=(
            "An extraction step summarises a support ticket and names the product area; a "
            "classification step decides the customer's intent and the ticket's urgency."
        ),
        stages=[
            Stage(
                name="extract",
                module="Predict",
                signature="ticket -> summary: str, product_area: str",
                instructions=(
                    "Summarise the support ticket in one sentence and name the product area it concerns."
                ),
            ),
            Stage(
                name="classify",
                module="Predict",
                signature="ticket, summary -> intent: str, urgency: str",
                instructions=(
                    "Decide what the customer wants (intent) and how urgently the ticket must be "
                    "handled (urgency)."
                ),
            ),
        ],
        sample="support_tickets.jsonl",
        input_fields=("ticket",),
        label_fields=("intent", "urgency"),
        default_mapping={"ticket": "ticket", "intent": "intent", "urgency": "urgency"},
    ),
    "pump_status": Template(
        key="pump_status",
        title="Pump status from sensor readings",
        description=(
            "A single step that reads four numeric sensor readings of a pump (bearing temperature, "
            "vibration, pressure, flow) and decides its status: normal, warning or fault."
        ),
        stages=[
            Stage(
                name="classify",
                module="Predict",
                signature="bearing_temp, vibration, pressure, flow_rate -> status: str",
                instructions=(
                    "From the pump's sensor readings, decide its status: normal, warning or fault."
                ),
            ),
        ],
        # A numeric table (pump_readings.csv: the readings as numbers with one decimal): the status is
        # decided by a threshold rule on the readings (data/README.md). The run's label choices (from the
        # data, 'auto') make ``status`` one of the three values.
        sample="pump_readings.csv",
        input_fields=("bearing_temp", "vibration", "pressure", "flow_rate"),
        label_fields=("status",),
        default_mapping={"bearing_temp": "bearing_temp", "vibration": "vibration",
                         "pressure": "pressure", "flow_rate": "flow_rate", "status": "status"},
    ),
}

