"""The error boundary at each program's entry (the CLI, the benchmarks).

Whatever a command raises ends here as one line on stderr and a non-zero exit status:

- expected failures (`SkyfixError`; operating-system errors such as an existing output,
  a path under a file, a read-only or full disk; input too large for memory; input
  nested too deeply) -> `skyfix: error: <what, with the path>; <what to do>`, status 2;
- anything else is a bug -> `skyfix: internal error: <type>: <message>; crash report:
  <file>`, status 70 (EX_SOFTWARE). The report holds the traceback, the version, the
  command line and the configuration file it named, so the line stays one line.

Crash reports go to `$SKYFIX_CRASH_DIR`, else `$STATE_DIRECTORY/crash` (set by systemd's
StateDirectory=), else `<temp dir>/skyfix-crash`.
"""

from __future__ import annotations

import errno
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from skyfix.runtime.core.errors import SkyfixError
from skyfix.runtime.core.files import systemd_state_dir

EXIT_ERROR = 2
EXIT_BUG = 70  # sysexits.h EX_SOFTWARE
EXIT_INTERRUPTED = 130
_CONFIG_BYTES = 64_000  # at most this much of the config file goes into a crash report

_ADVICE = {  # what to do, by errno (the error's own text says what happened)
    errno.EEXIST: "choose another path, or remove it",
    errno.ENOTDIR: "a part of that path is a file, not a folder: choose another path",
    errno.EISDIR: "give a file there, not a folder",
    errno.ENOENT: "check the path",
    errno.ENOSPC: "free some space or write somewhere else",
    errno.EDQUOT: "free some space or write somewhere else",
    errno.EFBIG: "the file size limit (ulimit -f) or the disk's space is used up",
    errno.EROFS: "write somewhere else",
    errno.EACCES: "check the owner and mode, or use another path",
    errno.EPERM: "check the owner and mode, or use another path",
    errno.ENAMETOOLONG: "choose a shorter path",
    errno.ELOOP: "check the symbolic links in the path",
    errno.EMFILE: "raise the open-files limit (ulimit -n)",
    errno.EPIPE: "the reader closed the output",
    errno.EADDRINUSE: "stop the other program or use another port",
    errno.EIO: "check the device or disk",
}


def describe_os_error(exc: OSError) -> str:
    """One line for an operating-system error: the path(s), what happened, what to do."""
    paths = " -> ".join(str(p) for p in (exc.filename, exc.filename2) if p is not None)
    what = exc.strerror or str(exc) or type(exc).__name__
    advice = _ADVICE.get(exc.errno or -1, "")
    line = f"{paths}: {what}" if paths else what
    return f"{line}; {advice}" if advice else line


def expected_message(exc: BaseException) -> str | None:
    """The one-line message of an expected failure, or None when `exc` is a bug."""
    if isinstance(exc, SkyfixError):
        return str(exc)
    if isinstance(exc, OSError):
        return describe_os_error(exc)
    if isinstance(exc, MemoryError):
        return ("out of memory: an input is too large (or the machine too small); check "
                "the sizes of the files given")
    if isinstance(exc, RecursionError):
        return "an input is nested too deeply to read (a crafted or broken file?)"
    return None


def crash_dir() -> Path:
    """Where crash reports go (see the module doc)."""
    if os.environ.get("SKYFIX_CRASH_DIR"):
        return Path(os.environ["SKYFIX_CRASH_DIR"])
    state = systemd_state_dir()
    return state / "crash" if state else Path(tempfile.gettempdir()) / "skyfix-crash"


def _version() -> str:
    try:
        return metadata.version("skyfix")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def write_crash_report(exc: BaseException, argv: list[str], config: Path | None) -> Path:
    """Write the traceback, version, command line and config of `exc` to a new file in
    `crash_dir()`; returns its path (OSError when it cannot be written)."""
    folder = crash_dir()
    folder.mkdir(parents=True, exist_ok=True)
    now = time.gmtime()
    fd, name = tempfile.mkstemp(prefix=f"crash-{time.strftime('%Y%m%dT%H%M%S', now)}-",
                                suffix=".txt", dir=folder)  # a new file, never another's
    path = Path(name)
    parts = [f"skyfix {_version()} crash report, {time.strftime('%Y-%m-%dT%H:%M:%SZ', now)}",
             f"python {platform.python_version()} on {platform.platform()}",
             f"command: {' '.join(argv)}", ""]
    parts += traceback.format_exception(type(exc), exc, exc.__traceback__)
    if config is not None:
        try:
            with open(config, "rb") as f:
                text = f.read(_CONFIG_BYTES).decode("utf-8", "replace")
            parts += ["", f"config {config}:", text]
        except OSError as err:
            parts += ["", f"config {config}: unreadable ({err.strerror})"]
    with open(fd, "w", encoding="utf-8") as f:
        f.write("\n".join(p.rstrip("\n") for p in parts) + "\n")
    return path


def run_guarded(fn: Callable[[], object], argv: list[str], config: Path | None = None,
                prog: str = "skyfix") -> int:
    """Call `fn`; return its exit status (what it returned when an int, else 0), or print
    one line and return 2 / 70 / 130 (see the module doc). `argv` and `config` go into a
    crash report."""
    try:
        status = fn()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BaseException as exc:  # the boundary: nothing passes it as a traceback
        if isinstance(exc, SystemExit):
            raise
        message = expected_message(exc)
        if message is not None:
            print(f"{prog}: error: {' '.join(message.split())}", file=sys.stderr)
            return EXIT_ERROR
        summary = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        try:
            where = f"crash report: {write_crash_report(exc, argv, config)}"
        except OSError as err:
            where = f"no crash report ({describe_os_error(err)})"
        print(f"{prog}: internal error: {summary}; {where}", file=sys.stderr)
        return EXIT_BUG
    return status if isinstance(status, int) else 0
