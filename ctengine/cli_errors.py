"""How the ``ctengine`` command reports errors: one line saying what is wrong and what to do.

Every subcommand of :func:`ctengine.cli.main` is a :class:`Command`, whose
:meth:`Command.invoke` turns an exception into a
:class:`click.ClickException` through :func:`translate`: click prints it as
one ``Error: ...`` line and exits 1 (usage errors, :class:`click.UsageError`,
exit 2 as click reports them). Known user errors (a missing or foreign
store, a full disk, an unreachable scheduler, a bad argument) keep their
message; anything else prints its type and message and how to see the
traceback (``CTENGINE_DEBUG=1`` or ``ctengine --debug``).
"""
from __future__ import annotations

import errno
import os
from typing import Any, Iterable

import click

#: set to 1 (or pass ``ctengine --debug``) to see the traceback of an unexpected error
DEBUG_ENV = "CTENGINE_DEBUG"

#: errno values of a write refused for lack of room: no space, file size limit, disk quota
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)

#: parameters naming where a command writes, most specific first (the path a full disk is reported on)
WRITE_PARAMS = ("store", "out", "workdir")


class DiskFullError(click.ClickException):
    """A write failed for lack of room; running the same command again resumes.

    Parameters
    ----------
    path : str
        Where the command was writing (the store, the output folder).
    """

    def __init__(self, path: str):
        super().__init__(f"no space left on {path}: free space and run the same command again; "
                         f"it resumes where it stopped")


def debugging(ctx: click.Context | None = None) -> bool:
    """Whether an unexpected error shows its traceback (``CTENGINE_DEBUG=1`` or ``--debug``)."""
    if os.environ.get(DEBUG_ENV, "").strip() not in ("", "0"):
        return True
    return bool(ctx is not None and ctx.find_root().params.get("debug"))


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` is an :class:`OSError` of a full disk (ENOSPC, EFBIG or EDQUOT).

    Examples
    --------
    >>> import errno
    >>> disk_full(OSError(errno.ENOSPC, "No space left on device"))
    True
    >>> disk_full(OSError(errno.EACCES, "Permission denied"))
    False
    """
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


def disk_full_reason(reason: str) -> bool:
    """Whether a failure reason (``"OSError: [Errno 28] ..."``, as a series failure is recorded) is a full disk.

    Examples
    --------
    >>> disk_full_reason("OSError: [Errno 27] File too large")
    True
    >>> disk_full_reason("ValueError: bad slice")
    False
    """
    return any(f"[Errno {number}]" in reason for number in DISK_FULL_ERRNOS)


def write_path(params: dict[str, Any], fallback: str | None = None) -> str:
    """The path a command writes to, from its parameters (``store``, ``out``, ``workdir``), else ``fallback``."""
    for name in WRITE_PARAMS:
        if params.get(name):
            return os.fspath(params[name])
    return fallback or "the disk"


def raise_if_disk_full(reasons: Iterable[str], params: dict[str, Any]) -> None:
    """Raise :class:`DiskFullError` when one of the failure ``reasons`` of a run is a full disk.

    Raises
    ------
    DiskFullError
    """
    if any(disk_full_reason(reason) for reason in reasons):
        raise DiskFullError(write_path(params))


def one_line(text: str) -> str:
    """``text`` on one line: its lines joined by spaces.

    Examples
    --------
    >>> one_line("first\\n\\n  second ")
    'first second'
    """
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def translate(exc: Exception, params: dict[str, Any]) -> click.ClickException | None:
    """The one-line error of a known user error, or None for an unexpected one.

    Parameters
    ----------
    exc : Exception
        What the command raised.
    params : dict
        The command's parameters (the paths named in the message).

    Returns
    -------
    click.ClickException or None
    """
    from .cluster import SchedulerUnreachableError
    from .store import StoreBusyError

    import pickle

    if isinstance(exc, click.ClickException):
        return exc
    if isinstance(exc, (pickle.UnpicklingError, EOFError)) and params.get("checkpoint"):
        return click.ClickException(f"{os.fspath(params['checkpoint'])} is not a ctengine checkpoint: give the "
                                    f"model.pt that ctengine train wrote")
    if disk_full(exc):
        return DiskFullError(write_path(params, exc.filename))
    report = getattr(exc, "report", None)  # NothingToIngestError: all series may have failed on a full disk
    if report is not None and any(disk_full_reason(reason) for _, reason in getattr(report, "failed_series", ())):
        return DiskFullError(write_path(params))
    if isinstance(exc, (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
                        StoreBusyError, SchedulerUnreachableError)):
        return click.ClickException(one_line(str(exc)))
    return None


def unexpected(exc: Exception) -> click.ClickException:
    """One line for an error no check anticipated: its type, message and how to see the traceback."""
    return click.ClickException(f"{type(exc).__name__}: {one_line(str(exc))} "
                                f"(run with {DEBUG_ENV}=1 for the traceback)")


class Command(click.Command):
    """A click command whose errors end in one line (see :func:`translate`)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.Abort, click.ClickException):
            raise
        except Exception as exc:
            known = translate(exc, ctx.params)
            if known is not None:
                raise known from None
            if debugging(ctx):
                raise
            raise unexpected(exc) from None


class Group(click.Group):
    """The ``ctengine`` group: its subcommands are :class:`Command`."""

    command_class = Command
