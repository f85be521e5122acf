"""Where a session step's time goes inside the server, without gRPC: `python -m bench.step_cost`.

On the reference LSTM(64) models (`lstm64_8x8` many-to-one, `lstm64_aligned` aligned), batch 1,
one step at a time, in one process:
- the traced step program (`IncrementalProgram`: a TensorFlow concrete function per call);
- the numpy step program the server proves and serves where it can (`NumpyProgram`);
- both on a 500-step chunk (one message of 500 steps), per step;
- the session core (`SessionManager.step`: validation, step queue, program) with the lone
  step computed inline on the event loop, and handed to the model's compute thread instead;
- the whole session path without gRPC: parse a `SessionRequest`, decode, step, encode the
  `SessionOutput`, serialize.
Wall and CPU time per call (CPU counts every thread of the process). Ratios within one run.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Awaitable, Callable

import numpy as np

from bench.models import ALIGNED, REFERENCE, BenchModel, loaded_repository
from bench.path_costs import measure

CHUNK = 500


def _rows(model: BenchModel, repository, n: int) -> list[dict]:
    from seqserve.v1 import seqserve_pb2 as pb
    from seqserve_api.tensors import to_tensor
    from seqserve_server.core import sessions as core_sessions
    from seqserve_server.core.compute_threads import ModelThreads
    from seqserve_server.core.observer import ModelObservers
    from seqserve_server.core.stepping.programs import build_step_program
    from seqserve_server.transport import v1_messages as msg

    ready = repository.resolve(model.name)
    manager = core_sessions.SessionManager(repository, ModelThreads(1), ModelObservers())
    manager.install(ready, manager.build(ready))
    served = manager.incremental_program(ready)
    assert served is not None, "the bench models step incrementally"
    traced = build_step_program(ready.runtime.model, ready.mode)
    rng = np.random.default_rng(0)
    one, chunk = model.inputs(rng, 1, 1), model.inputs(rng, 1, CHUNK)
    wire = pb.SessionRequest(steps=pb.SessionSteps(values=to_tensor(one[0]))).SerializeToString()
    session = manager.open(model.name)
    name = model.name

    def program_call(program, x: np.ndarray) -> Callable[[], Awaitable[object]]:
        state = program.initial_state(1)

        async def call() -> object:
            return program.step(state, x)

        return call

    async def core_step() -> object:
        return await manager.step(session, one[0])

    async def whole_path() -> object:
        request = pb.SessionRequest.FromString(wire)
        values = msg.decode_steps(request.steps, msg.decode_limits(ready.limits))
        output = await manager.step(session, values)
        assert output is not None
        return msg.session_output(output).SerializeToString()

    k = max(10, n // 50)
    rows = [
        measure(f"{name}: traced program, 1 step", program_call(traced, one), n // 4),
        measure(
            f"{name}: served program ({type(served).__name__}), 1 step",
            program_call(served, one),
            n,
        ),
        measure(f"{name}: traced program, {CHUNK}-step chunk", program_call(traced, chunk), k),
        measure(f"{name}: served program, {CHUNK}-step chunk", program_call(served, chunk), k),
        measure(f"{name}: session core step (inline)", core_step, n),
    ]
    limit = core_sessions.INLINE_MAX_STEPS
    core_sessions.INLINE_MAX_STEPS = 0  # every step handed to the compute thread
    try:
        rows.append(measure(f"{name}: session core step (compute thread)", core_step, n))
    finally:
        core_sessions.INLINE_MAX_STEPS = limit
    rows.append(measure(f"{name}: whole session step path, no gRPC", whole_path, n))
    for row in rows:
        if "chunk" in row["path"]:
            row["per_step_ms"] = row["wall_ms"] / CHUNK
    manager.close(session)
    return rows


def main(n: int) -> list[dict]:
    repository = loaded_repository([REFERENCE.name, ALIGNED.name], "seqserve-step-cost-")
    return [row for model in (REFERENCE, ALIGNED) for row in _rows(model, repository, n)]


def table(rows: list[dict]) -> str:
    out = [
        "| path | wall ms per call | CPU ms per call | wall ms per step |",
        "|---|---:|---:|---:|",
    ]
    for r in rows:
        per_step = r.get("per_step_ms", r["wall_ms"])
        out.append(f"| {r['path']} | {r['wall_ms']:.3f} | {r['cpu_ms']:.3f} | {per_step:.4f} |")
    return "\n".join(out)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    print(table(main(parser.parse_args().calls)))
