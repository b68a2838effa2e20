"""The errors a user causes, which every tool reports in one line.

``tools/*.py`` (through :func:`repnas_mm.runner.run_tool`) print
``error: <message>`` and exit 1 for any of :data:`USER_ERRORS` instead of a
traceback: the message says what was wrong with the input and what to do.
Every other exception is a bug and keeps its traceback.
"""
from repnas_mm.rep.presets import BudgetError


class UserError(Exception):
    """A problem with what the user gave (a file, a config value)."""


# BudgetError lives in ``rep/`` (pure PyTorch, no import from here).
USER_ERRORS = (UserError, BudgetError)

__all__ = ['BudgetError', 'USER_ERRORS', 'UserError']
