"""The project's own error types.

Every message is meant for a user: it names what was wrong and what is allowed.
Pages catch ``StudioError`` and show it with ``st.error``; the CLI prints it on one line.
"""


class StudioError(Exception):
    """Base class of every error a user may see."""


class ConfigError(StudioError):
    """The run configuration is invalid."""


class DataError(StudioError):
    """A dataset file cannot be loaded, mapped or split."""


class ProgramError(StudioError):
    """A program (template, composed pipeline or user file) cannot be built."""


class StrategyError(StudioError):
    """A strategy string or step setting is invalid."""


class LMError(StudioError):
    """An LM cannot be built, reached or fine-tuned."""


class MetricError(StudioError):
    """An unknown metric or metric settings that do not fit the program."""


class StoreError(StudioError):
    """The run store cannot be read or written."""


class ExportError(StudioError):
    """A bundle cannot be written or loaded."""


class RunCancelled(BaseException):
    """Raised inside LM calls when the user cancels a run.

    A BaseException on purpose: it passes DSPy's ``except Exception`` layers so the
    current step stops at once. The runner converts it back into an ordinary
    ``StepCancelled`` exception at the step boundary.
    """


class StepCancelled(StudioError):
    """The current step was cancelled by the user; the best program so far is kept."""
