"""How the core reports what it does, without knowing who listens (Prometheus, tests, nothing)."""

from __future__ import annotations

from typing import Protocol


class ModelObserver(Protocol):
    """Events of one model's batcher and sessions."""

    def batch_executed(self, size: int, compute_seconds: float) -> None: ...
    def queue_wait(self, seconds: float) -> None: ...
    def queue_depth(self, n: int) -> None: ...
    def sessions_open(self, n: int) -> None: ...
    def session_steps(self, n: int) -> None: ...
    def compute_path(self, version: int, kind: str, path: str) -> None:
        """`kind` "predict" or "session": the path that computes it, proven at load."""

    def shed(self, reason: str) -> None:
        """A call refused with pushback by the batcher's admission ("deadline": its deadline
        could not cover the estimate; "queue": overtaken under a standing queue)."""


class CallObserver(Protocol):
    """Events of the server-wide front door (core/call_admission.py)."""

    def shed(self, reason: str) -> None:
        """A call refused at the front door: "deadline", "expired" (while it waited), "rate",
        "session" (a new session while congested)."""

    def waited(self, seconds: float) -> None:
        """A call started after waiting its turn for `seconds`."""

    def window(self, state: dict[str, float], callers: dict[str, int]) -> None:
        """Once per window: the limit, calls in progress, waiting, the loop's lag, the
        estimated wait; and each caller's calls in progress."""


class Observer(Protocol):
    def model_loaded(self, model: str, version: int, state: str, seconds: float) -> None: ...
    def model_unloaded(self, model: str, version: int) -> None: ...
    def for_model(self, model: str) -> ModelObserver: ...


class NullModelObserver:
    def batch_executed(self, size: int, compute_seconds: float) -> None:
        pass

    def queue_wait(self, seconds: float) -> None:
        pass

    def queue_depth(self, n: int) -> None:
        pass

    def sessions_open(self, n: int) -> None:
        pass

    def session_steps(self, n: int) -> None:
        pass

    def compute_path(self, version: int, kind: str, path: str) -> None:
        pass

    def shed(self, reason: str) -> None:
        pass


class NullCallObserver:
    def shed(self, reason: str) -> None:
        pass

    def waited(self, seconds: float) -> None:
        pass

    def window(self, state: dict[str, float], callers: dict[str, int]) -> None:
        pass


class NullObserver:
    def model_loaded(self, model: str, version: int, state: str, seconds: float) -> None:
        pass

    def model_unloaded(self, model: str, version: int) -> None:
        pass

    def for_model(self, model: str) -> ModelObserver:
        return NullModelObserver()


class ModelObservers:
    """`Observer.for_model`, made once per model and shared by every core service."""

    def __init__(self, observer: Observer | None = None) -> None:
        self._observer = observer or NullObserver()
        self._models: dict[str, ModelObserver] = {}

    def __call__(self, model: str) -> ModelObserver:
        if model not in self._models:
            self._models[model] = self._observer.for_model(model)
        return self._models[model]
