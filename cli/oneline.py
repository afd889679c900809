"""Commands that end with one line, never a traceback or a usage box, when given bad input.

:class:`OneLineTyper` runs a typer app so that

- a bad argument or option (click's usage errors) is one line on stderr naming it,
  ``sagawire saga list: Invalid value for '--status': ...``, exit status 2;
- a bad setting (:class:`common.config.BadSetting`, or a settings class refusing a
  ``SAGAWIRE_*`` variable) is one line naming the variable, exit status 2;
- Ctrl-C ends it quietly with the shell's status for an interrupt, 130.

``--help`` and everything else behave as usual.
"""

from __future__ import annotations

import sys
from typing import Any, NoReturn

import typer
from pydantic import ValidationError
from pydantic_settings import SettingsError

from common.config import BAD_SETTING_STATUS, BadSetting, bad_setting_of

INTERRUPTED = 130


def fail(prog: str, message: str, status: int = BAD_SETTING_STATUS) -> NoReturn:
    """Print ``prog: message`` as one line on stderr and exit with ``status``."""
    text = " ".join(message.replace("Value error, ", "").split())
    print(f"{prog}: {text}", file=sys.stderr, flush=True)
    raise SystemExit(status)


def _kinds(error: BaseException) -> set[str]:
    """The class names of ``error``'s ancestry. Typer ships its own copy of click (or uses
    click itself, by version), so its exceptions are recognised by name."""
    return {cls.__name__ for cls in type(error).__mro__}


class OneLineTyper(typer.Typer):
    """A :class:`typer.Typer` whose errors of input are one line (see the module docstring)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        prog = str(kwargs.get("prog_name") or "sagawire")
        kwargs.setdefault("prog_name", prog)
        kwargs["standalone_mode"] = False
        try:
            status = super().__call__(*args, **kwargs)
        except typer.Abort:
            raise SystemExit(INTERRUPTED) from None
        except BadSetting as error:
            fail(prog, str(error))
        except (ValidationError, SettingsError) as error:
            fail(prog, str(bad_setting_of(error)))
        except Exception as error:
            kinds = _kinds(error)
            ctx = getattr(error, "ctx", None)
            if "NoArgsIsHelpError" in kinds and ctx is not None:
                # A group called with nothing: its help, as usual.
                print(ctx.get_help())
                raise SystemExit(BAD_SETTING_STATUS) from None
            if "UsageError" in kinds:
                fail(ctx.command_path if ctx is not None else prog, error.format_message())  # type: ignore[attr-defined]
            if "ClickException" in kinds:
                fail(prog, error.format_message(), error.exit_code)  # type: ignore[attr-defined]
            if "Abort" in kinds:
                raise SystemExit(INTERRUPTED) from None
            raise
        raise SystemExit(status if isinstance(status, int) else 0)
