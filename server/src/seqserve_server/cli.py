"""`seqserve serve ...`: parse flags and environment, run the server until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Iterator

from pydantic_settings import CliApp

from .config import Settings
from .transport.instrumentation import quiet_abandoned_calls
from .workers import run_workers

USAGE = "usage: seqserve serve [--help] [flags]   (every flag is also SEQSERVE_<NAME>)"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] != "serve":
        print(USAGE, file=sys.stderr)
        return 2
    # Until the server's own handlers are installed (after TensorFlow's slow import), a stop
    # request must still stop the process, also as PID 1 in a container.
    signal.signal(signal.SIGTERM, _stop_now)
    settings = CliApp.run(Settings, cli_args=args[1:])
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    quiet_abandoned_calls()  # a caller's cancel or expired deadline is no server ERROR
    if settings.workers > 1:
        return run_workers(settings)
    asyncio.run(serve(settings))
    return 0


def _stop_now(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


# Libraries Keras imports when they are installed, for features a server never uses (plots,
# scikit-learn wrappers, DataFrames): ~2-3 s of startup in an environment that has them.
OPTIONAL_FOR_KERAS = ("matplotlib", "sklearn", "pandas")


@contextlib.contextmanager
def lean_imports(lean: bool = True) -> Iterator[None]:
    """While Keras is imported, the libraries of `OPTIONAL_FOR_KERAS` look absent (Keras imports
    each in `try: ... except ImportError`); afterwards they import normally again."""
    hidden = [n for n in OPTIONAL_FOR_KERAS if lean and n not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # "import name" raises ImportError
    try:
        yield
    finally:
        for name in hidden:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


async def serve(settings: Settings) -> None:
    with lean_imports():
        from .app import App  # imports TensorFlow: keep `--help` fast

    app = App(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await app.start()
    print(f"seqserve ready on {settings.host}:{app.port} metrics {app.metrics_port}", flush=True)
    await stop.wait()
    logging.getLogger(__name__).info("stopping: finishing in-flight work")
    await app.stop()


if __name__ == "__main__":
    sys.exit(main())
