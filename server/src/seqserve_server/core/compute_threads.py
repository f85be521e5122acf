"""Each model version computes on threads of its own.

Isolation: a slow or flooded model cannot occupy the threads another model needs, and models
still compute in parallel with each other. (One thread against two alternating ones made no
consistent difference in `python -m bench.path_costs`.)
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor


class ModelThreads:
    def __init__(self, threads_per_model: int = 1) -> None:
        self.threads_per_model = threads_per_model
        self._executors: dict[tuple[str, int], ThreadPoolExecutor] = {}

    def executor(self, model: str, version: int) -> ThreadPoolExecutor:
        key = (model, version)
        if key not in self._executors:
            self._executors[key] = ThreadPoolExecutor(
                self.threads_per_model, thread_name_prefix=f"compute-{model}-{version}"
            )
        return self._executors[key]

    def release(self, model: str, version: int) -> None:
        """The version is gone: its threads end once their current work is done."""
        executor = self._executors.pop((model, version), None)
        if executor is not None:
            executor.shutdown(wait=False)

    def shutdown(self) -> None:
        for executor in self._executors.values():
            executor.shutdown(wait=False, cancel_futures=True)
