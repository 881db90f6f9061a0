"""Programs: built-in templates, staged pipelines, user-file programs and predictor listing.

A program is described by a ``ProgramSpec`` (part of the run config) of one of three kinds:

- ``template``: one of the bundled ``TEMPLATES`` (a fixed list of stages plus a sample dataset);
- ``stages``: a pipeline the user composed from stages (``Predict``/``ChainOfThought`` + signature);
- ``user_file``: a ``dspy.Module`` subclass defined in a Python file (runs its code: opt-in only).

Templates and composed pipelines both become a ``StagedPipeline``; its predictors are attributes
named after the stages, so predictor names are DSPy's ``named_predictors()`` names
(``classify``; ``analyze.predict`` for a ``ChainOfThought`` stage).

Modules: ``specs`` (the config's program specs and small records), ``stages`` (signatures,
validation, ``StagedPipeline``), ``templates`` (the built-in templates), ``user_file`` (loading a
user's module, opt-in), ``build`` (spec -> program, fields, description, export definitions,
label choices, label predictors), ``metrics`` (the built-in metrics, each a float in [0, 1]).
"""

from core.programs.build import (
    apply_label_choices,
    build_program,
    build_program_from_definition,
    describe_predictors,
    label_fields,
    label_keys,
    label_predictors,
    module_fields,
    program_definition,
    program_fields,
)
from core.programs.specs import PredictorInfo, ProgramSpec, StagesProgram, TemplateProgram, UserFileProgram
from core.programs.stages import (
    MAX_STAGES,
    SIGNATURE_FORM,
    STAGE_MODULES,
    ProgramFields,
    Stage,
    StagedPipeline,
    parse_stage_signature,
    stage_name_problem,
    validate_stages,
)
from core.programs.templates import TEMPLATES, Template

__all__ = [
    "MAX_STAGES",
    "SIGNATURE_FORM",
    "STAGE_MODULES",
    "TEMPLATES",
    "PredictorInfo",
    "ProgramFields",
    "ProgramSpec",
    "Stage",
    "StagedPipeline",
    "StagesProgram",
    "Template",
    "TemplateProgram",
    "UserFileProgram",
    "apply_label_choices",
    "build_program",
    "build_program_from_definition",
    "describe_predictors",
    "label_fields",
    "label_keys",
    "label_predictors",
    "module_fields",
    "parse_stage_signature",
    "program_definition",
    "program_fields",
    "stage_name_problem",
    "validate_stages",
]
