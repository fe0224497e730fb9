"""One console convention for every stage: a rank-aware ``raywiz`` logger, and quiet dependencies.

    from raywiz.log import get_logger, say
    log = get_logger(__name__)       # diagnostics: shown with --verbose / RAYWIZ_LOG_LEVEL=debug
    say("train: 15 steps done")      # what a user reads: one line on stderr, from rank 0 only

Every line goes to standard error as ``raywiz: ...``, so standard output stays for what a command
returns (a path, a JSON summary). Off rank 0 of a training run ``say`` prints nothing: a line
appears once, however many workers there are.

``setup_console`` is called once by the CLI. Unless verbose, it hides Ray's, torch's and Python's
warnings and info lines from the console (Ray still writes them to its own log files under
``/tmp/ray/session_*/logs``), and ``ray_log_settings`` gives ``ray.init`` the matching arguments.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

ROOT = "raywiz"
LEVEL_ENV = "RAYWIZ_LOG_LEVEL"
_NOISY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.serve", "ray.tune", "torch", "torch.distributed",
                  "deepspeed", "DeepSpeed", "transformers", "accelerate", "urllib3", "filelock", "httpx", "wandb")


def get_logger(name: str = ROOT) -> logging.Logger:
    """A logger under ``raywiz`` (pass ``__name__``; names outside the package are nested under it)."""
    return logging.getLogger(name if name == ROOT or name.startswith(ROOT + ".") else f"{ROOT}.{name}")


def verbose() -> bool:
    """Is the console in verbose mode (``--verbose`` or ``RAYWIZ_LOG_LEVEL=debug``)?"""
    return os.environ.get(LEVEL_ENV, "").lower() == "debug"


def rank() -> int:
    """This process's rank in a training run (0 outside one)."""
    for var in ("RANK", "WORLD_RANK"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    # No process is in a process group without having imported torch.distributed: don't import it here
    # (a CLI line would pay for importing torch).
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return 0


def say(message: str, *, all_ranks: bool = False) -> None:
    """A line for the user, on stderr, once (rank 0), through the ``raywiz`` logger."""
    if all_ranks or rank() == 0:
        _console_logger().info(message)


class _ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.levelno >= logging.WARNING and record.name != ROOT + ".console":
            text = f"{record.levelname.lower()}: {text}"
        return f"raywiz: {text}"


def _console_logger() -> logging.Logger:
    logger = logging.getLogger(ROOT + ".console")
    _ensure_handler()
    return logger


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (a test's capture, a redirected stream)."""

    _raywiz = True

    def __init__(self):
        super().__init__()

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def _ensure_handler() -> None:
    root = logging.getLogger(ROOT)
    if not any(getattr(h, "_raywiz", False) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(_ConsoleFormatter())
        root.addHandler(handler)
        root.propagate = False
        if root.level == logging.NOTSET:
            root.setLevel(logging.DEBUG if verbose() else logging.INFO)
    logging.getLogger(ROOT + ".console").setLevel(logging.INFO)


def setup_console(verbose_flag: bool = False) -> None:
    """Set the console up for a raywiz command; environment variables carry it to Ray's workers."""
    if verbose_flag:
        os.environ[LEVEL_ENV] = "debug"
    _ensure_handler()
    logging.getLogger(ROOT).setLevel(logging.DEBUG if verbose() else logging.INFO)
    if verbose():
        return
    # Inherited by every process Ray starts on this machine (and forwarded by raywiz.runtime).
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' "Loading weights" bar too
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    warnings.simplefilter("ignore")
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def quiet_ray_data() -> None:
    """Ray Data sets its own loggers up when it is imported: quiet them again (unless verbose).

    Its execution-plan lines still go to Ray Data's log file in the session's logs directory.
    """
    if not verbose():
        logging.getLogger("ray.data").setLevel(logging.ERROR)


def ray_log_settings() -> dict:
    """``ray.init`` arguments that match the console mode: workers' output only when verbose."""
    if verbose():
        return {"log_to_driver": True}
    return {"log_to_driver": False, "logging_level": logging.ERROR}


# Environment variables a Ray worker needs to keep the same console convention.
WORKER_ENV_VARS = (LEVEL_ENV, "PYTHONWARNINGS", "TRANSFORMERS_VERBOSITY", "TOKENIZERS_PARALLELISM",
                   "HF_HUB_DISABLE_PROGRESS_BARS")


# ---------------------------------------------------------------- progress display


def format_eta(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:  # None or NaN
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class ProgressDisplay:
    """One progress display for every stage: a tqdm bar on a terminal, plain lines otherwise.

        bar = ProgressDisplay("train", total=15, unit="step")
        bar.update(1, "loss 7.62 | 1,204 tok/s")   # a bar's postfix, or one line when not on a terminal
        bar.close()

    On a terminal (stderr is a TTY) tqdm draws the bar with its rate and ETA. Elsewhere (a pipe, a
    Ray job's log, CI) each ``update`` prints one line, at most every ``every`` units, so a log
    shows each step once and a long run does not flood it. Nothing is shown off rank 0.
    """

    def __init__(self, label: str, total: int, unit: str = "it", every: int = 1, enabled: bool = True,
                 stream=None):
        self.label, self.total, self.unit = label, total, unit
        self.every = max(1, every)
        self.stream = stream or sys.stderr
        self.enabled = enabled and total > 0 and rank() == 0
        self.done = 0
        self._last_printed = 0
        self._bar = None
        if self.enabled and _isatty(self.stream):
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=f"raywiz: {label}", unit=unit, file=self.stream,
                             dynamic_ncols=True, mininterval=0.5, leave=True)

    def update(self, n: int = 1, detail: str = "", eta_s: float | None = None, done: int | None = None) -> None:
        """Advance by ``n`` (or to ``done``) and show ``detail`` (e.g. loss, throughput)."""
        if not self.enabled:
            return
        step = (done if done is not None else self.done + n)
        advanced, self.done = step - self.done, step
        if self._bar is not None:
            if detail:
                self._bar.set_postfix_str(detail, refresh=False)
            self._bar.update(advanced)
            return
        if self.done - self._last_printed >= self.every or self.done >= self.total:
            self._last_printed = self.done
            eta = f" | ETA {format_eta(eta_s)}" if eta_s is not None else ""
            parts = f"{self.label} {self.unit} {self.done}/{self.total}" + (f" | {detail}" if detail else "")
            print(f"raywiz: {parts}{eta}", file=self.stream, flush=True)

    def note(self, message: str) -> None:
        """A line of its own (above the bar on a terminal)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(f"raywiz: {message}", file=self.stream)
        else:
            print(f"raywiz: {message}", file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
