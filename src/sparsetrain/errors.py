"""The exceptions and warnings the library raises for what a user gave it (see ``docs/errors.md``).

A bad input is refused where it enters (a constructor, a config's validation, a checkpoint's
load), with a message that names the setting and says how to fix it:

- :class:`InputError` (a ``ValueError``): a value, file or saved state that cannot work;
- :class:`InputTypeError` (also a ``TypeError``): a value of the wrong kind (``density=True``);
- :class:`InputWarning` (a ``UserWarning``): accepted, but the run will not do everything the
  input suggests; :class:`ScheduleWarning` is the case "no topology update fits in the run".

Because they subclass the built-in types, ``except ValueError`` still catches them. The command
line turns these (and only these, with missing files and missing optional packages) into one
``error:`` line; any other exception reaching it is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["InputError", "InputTypeError", "InputWarning", "ScheduleWarning"]


class InputError(ValueError):
    """A value, file or saved state given by the user that cannot work; the message names it and the fix."""


class InputTypeError(InputError, TypeError):
    """A value of the wrong type (e.g. a bool where a number is expected); also a ``TypeError``."""


class InputWarning(UserWarning):
    """An input that is accepted but will not do everything it suggests (e.g. an ignored setting)."""


class ScheduleWarning(InputWarning):
    """A dynamic algorithm whose schedule fits no topology update into the run: it trains statically."""
