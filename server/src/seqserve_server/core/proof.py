"""The load-time proof: a compiled path is served only if it computes what Keras computes.

Every candidate path (the traced function, the node-by-node graph, per-length functions, step
programs) runs a probe set and is compared with the eager model, `model(x, training=False)`:
batch 1 and a larger batch; lengths 1, 2, an odd length and one longer than any warm-up (only
the fixed length where the model has one); token ids drawn inside the
vocabulary, with padding ids among them; float steps with some all-zero steps (what `Masking`
skips). Shapes must be equal and every value within `TOL` (relative above magnitude 1).
A model with several inputs is probed with one array per input: sequence inputs at the same
length, and (where the model allows it) at lengths that differ by input.

Text is written from the model's own vocabulary (`InputKind.words`) with unknown words,
punctuation, non-ASCII and a long text among it; token strings per step get unknown and empty
tokens too. A whole-text model is also probed with an empty text, which Keras itself may
refuse (an LSTM fed no tokens fails): a path must then refuse it too (`Probe.keras_may_refuse`).
String outputs must be equal.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from . import reference_cache
from .modes import Mode
from .reference_cache import ModelReferences
from .signature import STRING, TEXT_SHAPE, InputKind, InputSpec
from .stepping.programs import SessionSupport, StepProgram

TOL = 1e-5
# (batch, steps): batch 1 at every length, a larger batch at a short and the longest length.
# 9: odd, and longer than any warm-up (2). Eager Keras costs ~5-50 ms per step on a small CPU,
# so the probe set is what makes loading slow; it is kept to 28 eager steps.
PROBE_SHAPES = ((1, 1), (1, 2), (1, 5), (1, 9), (3, 2), (3, 9))
PROBE_BATCHES = (1, 3)  # vector models
RUNNING_CHECK_MAX_LENGTH = 5  # many-to-one sessions: every running output checked up to here
CHUNKS = (1, 3, 2, 4)  # session message sizes the step proof feeds, cycled


Values = np.ndarray | tuple[np.ndarray, ...]  # one input, or one array per input


@dataclass(frozen=True)
class Probe:
    name: str
    x: Values
    keras_may_refuse: bool = False  # where eager Keras raises, the path must raise too

    @property
    def steps(self) -> int:
        first = self.x[0] if isinstance(self.x, tuple) else self.x
        return int(first.shape[1])


class ProofFailed(Exception):
    """A candidate differs from Keras on a probe; the message names the probe and how."""


def probes(kind: InputKind, seed: int = 0) -> list[Probe]:
    rng = np.random.default_rng(seed)
    if _whole_text(kind):
        return _text_probes(rng, kind)
    if not kind.takes_sequence:
        return [_probe(rng, kind, b, None) for b in PROBE_BATCHES]
    fixed = kind.shape[0]
    if fixed is not None:
        return [_probe(rng, kind, b, fixed) for b in PROBE_BATCHES]
    return [_probe(rng, kind, b, n) for b, n in PROBE_SHAPES]


def several_probes(kinds: Sequence[InputKind], equal_lengths: bool, seed: int = 0) -> list[Probe]:
    """Probes of a model with several inputs: at each probe shape, every sequence input at the
    probe's length, or (every other probe, where lengths may differ) the k-th sequence input k
    steps longer."""
    rng = np.random.default_rng(seed)
    if not any(k.takes_sequence for k in kinds):
        shapes: Sequence[tuple[int, int | None]] = [(b, None) for b in PROBE_BATCHES]
    else:
        shapes = PROBE_SHAPES
    out = []
    for number, (batch, steps) in enumerate(shapes):
        spread = not equal_lengths and number % 2 == 0
        arrays, lengths, k = [], [], 0
        for kind in kinds:
            length = _length(kind, steps, k if spread else 0)
            k += kind.takes_sequence
            arrays.append(_array(rng, kind, batch, length))
            lengths.append("-" if length is None else str(length))
        where = f"batch {batch}" + ("" if steps is None else " x steps " + "/".join(lengths))
        out.append(Probe(where, tuple(arrays)))
    return out


def _length(kind: InputKind, steps: int | None, offset: int) -> int | None:
    if not kind.takes_sequence or steps is None:
        return None
    return kind.shape[0] if kind.shape[0] is not None else steps + offset


def _probe(rng: np.random.Generator, kind: InputKind, batch: int, steps: int | None) -> Probe:
    where = f"batch {batch}" + ("" if steps is None else f" x {steps} steps")
    return Probe(where, _array(rng, kind, batch, steps))


def _whole_text(kind: InputKind) -> bool:
    return kind.dtype == STRING and not kind.takes_sequence


UNKNOWN_WORDS = ("zzqxj", "Übermaß", "東京", "naïve", "🙂")  # outside any vocabulary, non-ASCII
LONG_TEXT_WORDS = 40


def _text_probes(rng: np.random.Generator, kind: InputKind) -> list[Probe]:
    """Whole texts: short and long ones of known and unknown words and punctuation, batch 1
    and 3; then the empty text, alone."""
    texts = [_text(rng, kind, n) for n in (1, 3, 5, 2, LONG_TEXT_WORDS, 7)]
    out = [
        Probe("text of 1 word", _texts(texts[:1])),
        Probe("3 texts of 3, 5 and 2 words", _texts(texts[1:4])),
        Probe(f"text of {LONG_TEXT_WORDS} words", _texts(texts[4:5])),
        Probe("text with punctuation and capitals", _texts([texts[5].capitalize() + ", ok?!"])),
        Probe("empty text", _texts([""]), keras_may_refuse=True),
    ]
    return out


def _texts(texts: Sequence[str]) -> np.ndarray:
    return np.array([[t.encode()] for t in texts], STRING).reshape(len(texts), *TEXT_SHAPE)


def _text(rng: np.random.Generator, kind: InputKind, words: int) -> str:
    return " ".join(_word(rng, kind) for _ in range(words))


def _word(rng: np.random.Generator, kind: InputKind) -> str:
    """Mostly the model's own words, one in four unknown."""
    if kind.words and rng.random() < 0.75:
        return str(kind.words[int(rng.integers(len(kind.words)))])
    return UNKNOWN_WORDS[int(rng.integers(len(UNKNOWN_WORDS)))]


def _tokens(rng: np.random.Generator, kind: InputKind, shape: tuple[int, ...]) -> np.ndarray:
    """Token strings: the model's words, unknown ones and a few empty tokens."""
    out = np.empty(shape, STRING)
    flat = out.reshape(-1)
    for i in range(flat.size):
        flat[i] = ("" if rng.random() < 0.1 else _word(rng, kind)).encode()
    return out


def _array(rng: np.random.Generator, kind: InputKind, batch: int, steps: int | None) -> np.ndarray:
    shape = (batch, *(int(steps if d is None else d) for d in kind.shape))  # type: ignore[arg-type]
    if _whole_text(kind):  # beside other inputs: texts of 1 to 9 words
        return _texts([_text(rng, kind, int(rng.integers(1, 10))) for _ in range(batch)])
    if kind.dtype == STRING:
        return _tokens(rng, kind, shape)
    if np.issubdtype(kind.dtype, np.integer):  # ids 0 and 1 where the range is not known
        x = rng.integers(0, kind.vocabulary or 2, size=shape).astype(kind.dtype)
    else:
        x = rng.normal(size=shape).astype(kind.dtype)
    if steps is not None and steps > 2 and batch > 1:  # padding / masked steps mid-sequence
        x[1, 1] = 0
        x[2, steps // 2 :: 3] = 0
    return x


def compare(probe: str, got: np.ndarray, want: np.ndarray) -> None:
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        raise ProofFailed(f"probe {probe}: shape {list(got.shape)}, Keras gives {list(want.shape)}")
    if want.dtype == STRING or got.dtype == STRING:
        _compare_strings(probe, got, want)
        return
    got64, want64 = got.astype(np.float64), want.astype(np.float64)
    both_nan = np.isnan(got64) & np.isnan(want64)
    diff = np.where(both_nan, 0.0, np.abs(got64 - want64))
    limit = TOL * np.fmax(1.0, np.abs(want64))
    bad = ~(diff <= limit)  # NaN on one side only is a difference
    if bad.any():
        at = np.unravel_index(int(np.argmax(bad)), bad.shape)
        raise ProofFailed(
            f"probe {probe}: value {got64[at]:.7g} at {[int(i) for i in at]}, Keras gives "
            f"{want64[at]:.7g} "
            f"(max difference {float(np.nanmax(diff)):.3g})"
        )


def _compare_strings(probe: str, got: np.ndarray, want: np.ndarray) -> None:
    bad = got != want
    if np.any(bad):
        at = np.unravel_index(int(np.argmax(bad)), bad.shape)
        raise ProofFailed(
            f"probe {probe}: {got[at]!r} at {[int(i) for i in at]}, Keras gives {want[at]!r}"
        )


class Reference:
    """The eager model's outputs, computed once per input and shared by every candidate; read
    from and written to the on-disk store of the model being loaded, if any (reference_cache)."""

    def __init__(
        self, eager: Callable[[Values], np.ndarray], store: ModelReferences | None = None
    ) -> None:
        self._eager = eager
        self._store = store if store is not None else reference_cache.current()
        self._cache: dict[str, np.ndarray] = {}

    def __call__(self, x: Values) -> np.ndarray:
        key = reference_cache.probe_key(x if isinstance(x, tuple) else (x,))
        if key not in self._cache:
            stored = self._stored(key)
            self._cache[key] = stored if stored is not None else self._computed(key, x)
        return self._cache[key]

    def _stored(self, key: str) -> np.ndarray | None:
        return self._store.get(key) if self._store is not None else None

    def _computed(self, key: str, x: Values) -> np.ndarray:
        output = np.asarray(self._eager(x))
        if self._store is not None:
            self._store.put(key, output)
        return output


def prove(fn: Callable[[Values], np.ndarray], cases: Sequence[Probe], ref: Reference) -> None:
    """Raise ProofFailed at the first probe where `fn` differs from Keras (or raises); where
    Keras itself refuses a probe that it may refuse, `fn` must refuse it too."""
    for probe in cases:
        want = None
        try:
            want = ref(probe.x)
        except Exception as exc:
            if not probe.keras_may_refuse:
                raise
            refusal = f"{type(exc).__name__}: {exc}"[:200]
        try:
            got = fn(probe.x)
        except Exception as exc:  # a candidate that cannot run a probe is no candidate
            if want is None:
                continue  # Keras refuses it too
            raise ProofFailed(f"probe {probe.name}: {type(exc).__name__}: {exc}"[:400]) from exc
        if want is None:
            raise ProofFailed(f"probe {probe.name}: Keras refuses it ({refusal}), the path answers")
        compare(probe.name, got, want)


def chunk_bounds(total: int, sizes: Sequence[int] = CHUNKS) -> list[tuple[int, int]]:
    """Boundaries of chunks of the cycled `sizes` covering `total` steps."""
    out, start, i = [], 0, 0
    while start < total:
        end = min(total, start + sizes[i % len(sizes)])
        out.append((start, end))
        start, i = end, i + 1
    return out


def prove_program(
    program: StepProgram,
    cases: Sequence[Probe],
    ref: Reference,
    chunkings: Sequence[Sequence[int]] = (CHUNKS,),
) -> None:
    """Feed every probe a chunk at a time (each chunking: session messages, stream windows) and
    compare what the program emits with Keras on the same steps. A model's static inputs are
    given at the start, its sequence inputs fed together."""
    for probe in cases:
        for sizes in chunkings:
            name = f"{probe.name} fed in chunks of {','.join(map(str, sizes))}"
            try:
                _prove_stepped(program, probe.x, name, ref, sizes)
            except ProofFailed:
                raise
            except Exception as exc:
                raise ProofFailed(f"probe {name}: {type(exc).__name__}: {exc}"[:400]) from exc


def _prove_stepped(
    program: StepProgram, x: Values, name: str, ref: Reference, sizes: Sequence[int]
) -> None:
    """A session's outputs after each chunk are the model's on the prefix fed so far (checked
    on every chunk of short probes, the last of long ones); an incremental aligned program's
    steps together are the model's on the whole sequence (what PredictStream sends)."""
    specs = program.signature.inputs
    arrays = x if isinstance(x, tuple) else (x,)
    statics = {s.name: a for s, a in zip(specs, arrays, strict=True) if not s.sequence}
    sequences = tuple(a for s, a in zip(specs, arrays, strict=True) if s.sequence)
    total = sequences[0].shape[1]
    state = program.initial_state(len(sequences[0]), statics)
    per_step: list[np.ndarray] = []
    for start, end in chunk_bounds(total, sizes):
        chunk = tuple(a[:, start:end] for a in sequences)
        state, y = program.step(state, chunk if len(chunk) > 1 else chunk[0])
        if program.mode is Mode.MANY_TO_MANY_UNALIGNED or not _checks_running(program, total, end):
            per_step.append(y)
            continue
        want = ref(_prefix(specs, arrays, end))
        if program.mode is Mode.MANY_TO_MANY_ALIGNED:
            want = want[:, start:end]
        compare(f"{name}, output after {end} steps", y, want)
        per_step.append(y)
    aligned = program.mode is Mode.MANY_TO_MANY_ALIGNED
    if aligned and program.support is SessionSupport.INCREMENTAL:
        compare(name, np.concatenate(per_step, axis=1), ref(x))
    elif program.mode is Mode.MANY_TO_MANY_UNALIGNED:
        compare(name, program.finish(state), ref(x))


def _prefix(specs: Sequence[InputSpec], arrays: tuple[np.ndarray, ...], end: int) -> Values:
    """The model's inputs with every sequence input cut to its first `end` steps."""
    cut = tuple(a[:, :end] if s.sequence else a for s, a in zip(specs, arrays, strict=True))
    return cut if len(cut) > 1 else cut[0]


def _checks_running(program: StepProgram, total: int, end: int) -> bool:
    """Running outputs: all of them on short probes, the last on long ones; a fixed-length
    model is defined at its length only."""
    if program.fixed_length is not None:
        return end == program.fixed_length
    return end == total or total <= RUNNING_CHECK_MAX_LENGTH
