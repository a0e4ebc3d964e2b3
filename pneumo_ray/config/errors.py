"""The exceptions a command turns into one line and an exit status: `UserError`, a user's mistake (a
flag, a folder, a file, an earlier result), and `Interrupted`, SIGINT or SIGTERM.

The library raises `UserError` with one line that names the path or flag, what is wrong and what to
do; the commands in study/ print it as `error: …` and exit with status 2 (`--debug` shows the
traceback). Anything else that escapes is a bug and keeps its traceback.

The frozen configurations check their values when they are built, so a command line and a library
caller get the same checks, before any data are decoded or Ray starts. Their `FieldError` names the
field by its flag: `--` and the field's name with dashes (`image_size` → `--image-size`), which is
how every command spells it; the one command that spells a field otherwise renames it
(`FieldError.with_flag`: study.ablate's --split-seed sets SweepConfig's `seed`).
"""

from __future__ import annotations

import math


class UserError(ValueError):
    """A mistake the user can fix; the message is the whole one-line explanation."""


class Interrupted(KeyboardInterrupt):
    """SIGINT (Ctrl-C) or SIGTERM stopped the command; it exits with status 128 + `signum` (130, 143).
    A KeyboardInterrupt, so that no `except Exception` on the way swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def flag_of(field: str) -> str:
    """The command-line flag that sets a configuration field: `image_size` → `--image-size`."""
    return "--" + field.replace("_", "-")


def shown(value: object) -> str:
    """A value as a user would type it: 1e-05, 0,1.5 (a range), '' (an empty name)."""
    if isinstance(value, (tuple, list)):
        return ",".join(shown(v) for v in value) or "''"
    if isinstance(value, float):
        return f"{value:g}"
    text = str(value)
    return text if text and text == text.strip() else repr(text)  # an empty or blank name stays visible


class FieldError(UserError):
    """A configuration field holds a value that is not valid: "<flag> <value>: <what to do>"."""

    def __init__(self, field: str, value: object, problem: str, flag: str | None = None) -> None:
        self.field, self.value, self.problem = field, value, problem
        self.flag = flag or flag_of(field)
        super().__init__(f"{self.flag}{'' if value is None else ' ' + shown(value)}: {problem}")

    def __reduce__(self) -> tuple:  # Ray pickles exceptions: rebuild from the parts, not the message
        return FieldError, (self.field, self.value, self.problem, self.flag)

    def with_flag(self, flag: str) -> FieldError:
        """The same error under the flag a command spells the field with."""
        return FieldError(self.field, self.value, self.problem, flag)


def require(ok: bool, field: str, value: object, problem: str, flag: str | None = None) -> None:
    """Raise FieldError(field, value, problem) unless `ok`."""
    if not ok:
        raise FieldError(field, value, problem, flag)


def positive(field: str, value: float, what: str, *, upper: float = math.inf, why: str = "") -> None:
    """`value` is a finite number above 0 (and at most `upper`), else FieldError naming `what` it is."""
    ok = isinstance(value, (int, float)) and math.isfinite(value) and 0 < value <= upper
    limit = f"above 0 and at most {upper:g}" if math.isfinite(upper) else "a finite number above 0"
    require(ok, field, value, f"the {what} must be {limit}{why}")


def at_least(
    field: str, value: int, low: int, what: str, *, upper: int | None = None, why: str = "", flag: str | None = None
) -> None:
    """`value` is a whole number ≥ `low` (and ≤ `upper`), else FieldError naming `what` it counts."""
    ok = isinstance(value, int) and low <= value and (upper is None or value <= upper)
    limit = f"a whole number from {low} to {upper}" if upper is not None else f"a whole number, at least {low}"
    require(ok, field, value, f"the {what} must be {limit}{why}", flag)
