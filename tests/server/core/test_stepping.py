"""The step-program package's parts in-process: state layout, Keras internals, graph analysis."""

from __future__ import annotations

import functools

import grpc
import keras
import numpy as np
import pytest
from keras import layers

from seqserve_server.core.errors import Unsupported
from seqserve_server.core.graph import graph_of
from seqserve_server.core.modes import Mode
from seqserve_server.core.stepping import keras_internals
from seqserve_server.core.stepping.analysis import Plan, Unsteppable, analyse
from seqserve_server.core.stepping.programs import build_step_program
from seqserve_server.core.stepping.state import (
    STEPS,
    OpKeys,
    split_states,
    stack_states,
    state_specs,
    steps_fed,
    tile,
)
from seqserve_server.transport.status import status_code
from tests.support.model_zoo import ZOO, dense_one_to_one


@functools.cache
def _plan(name: str) -> Plan:
    return analyse(graph_of(ZOO[name][0]()))


# -- state layout -------------------------------------------------------------------------


def test_states_stack_and_split_back_exactly() -> None:
    rng = np.random.default_rng(0)
    keys = OpKeys.of(3, "lstm")
    states = [
        {
            **steps_fed(1),
            keys.cell_state(0): rng.normal(size=(1, 4)),
            keys.window: rng.normal(size=(1, 2, 3)),
        }
        for _ in range(3)
    ]
    stacked = stack_states(states)
    assert stacked[STEPS].shape == (3,) and stacked[keys.window].shape == (3, 2, 3)
    for alone, back in zip(states, split_states(stacked), strict=True):
        assert alone.keys() == back.keys()
        assert all(np.array_equal(alone[k], back[k]) for k in alone)
    tiled = tile(states[0], 2)
    assert np.array_equal(tiled[keys.cell_state(0)][1], states[0][keys.cell_state(0)][0])
    spec = state_specs(stacked)[keys.window]
    assert spec.shape.as_list() == [None, 2, 3] and spec.dtype.name == "float64"


def test_op_keys_are_distinct_and_under_the_op_prefix() -> None:
    keys = OpKeys.of(7, "gru")
    built = [keys.cell_state(0), keys.cell_state(1), keys.last_output, keys.window, keys.tail]
    assert len(set(built)) == len(built) and STEPS not in built
    assert all(key.startswith("07.gru/") for key in built)


def test_a_program_state_is_the_steps_plus_its_ops_keys() -> None:
    model = ZOO["diff_forecaster"][0]()
    program = build_step_program(model, Mode.MANY_TO_MANY_ALIGNED)
    prefixes = {key.split("/")[0] for key in program.initial_state() if key != STEPS}
    carrying = [op for op in analyse(graph_of(model)).seq_ops if op.initial()]
    assert len(carrying) == 3  # two causal convolutions and an LSTM
    assert prefixes == {op.keys.prefix for op in carrying}


# -- Keras internals ----------------------------------------------------------------------


def _masked_tagger() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((None, 3)),
            layers.Masking(0.0),
            layers.LSTM(4, return_sequences=True),
            layers.Dense(2),
        ]
    )


def test_functional_graph_reads_nodes_in_order() -> None:
    model = _masked_tagger()
    graph = keras_internals.functional_graph(model)
    assert graph is not None and len(graph.inputs) == len(graph.outputs) == 1
    kinds = [type(node.operation).__name__ for node in graph.nodes]
    # Keras records the mask Masking computes as keras.ops nodes beside the layer.
    assert kinds == ["NotEqual", "Masking", "Any", "LSTM", "Dense"]
    lstm = graph.nodes[3]
    assert lstm.mask is not None and lstm.mask is lstm.inputs[1]
    assert graph.nodes[-1].outputs[0] is graph.outputs[0]
    seen = {id(graph.inputs[0])}
    for node in graph.nodes:  # topological: every input computed before
        assert all(id(kt) in seen for kt in node.inputs)
        seen.update(id(kt) for kt in node.outputs)


def test_functional_graph_fills_in_call_arguments() -> None:
    graph = keras_internals.functional_graph(_masked_tagger())
    assert graph is not None
    lstm = graph.nodes[3]
    args, kwargs = lstm.fill_in({id(lstm.inputs[0]): "x", id(lstm.mask): "m"})
    assert args[0] == "x" and kwargs["mask"] == "m"
    assert keras_internals.functional_graph(_Subclassed()) is None


class _Subclassed(keras.Model):
    def call(self, x: object) -> object:
        return x


def test_call_flags_and_ops_calls() -> None:
    model = _masked_tagger()
    lstm, dense = model.layers[1], model.layers[2]
    assert keras_internals.call_takes_training(lstm.cell)
    assert keras_internals.call_takes_mask(lstm) and not keras_internals.call_takes_mask(dense)
    assert keras_internals.propagates_training(layers.Dropout(0.5))
    graph = keras_internals.functional_graph(model)
    assert graph is not None
    calls = [keras_internals.ops_call(node.operation) for node in graph.nodes]
    assert calls[0] == ("NotEqual", None, False) and calls[2] == ("Any", [-1], False)
    assert calls[1] is None and calls[3] is None  # layers are not ops calls


# -- graph analysis -----------------------------------------------------------------------


def test_analysis_of_aligned_and_many_to_one_models() -> None:
    stacked = _plan("stacked_lstm")
    assert stacked.counts == {"Recurrent": 2, "PerStep": 3} and stacked.output_is_seq
    assert not stacked.frontier and not stacked.static_nodes
    assert _plan("diff_forecaster").counts == {"CausalConv": 2, "PerStep": 4, "Recurrent": 1}
    running = _plan("many_to_one")
    assert not running.output_is_seq and len(running.frontier) == 1  # the LSTM's last output
    assert [type(n.operation).__name__ for n in running.static_nodes] == ["Dense"]


def test_analysis_of_encoder_decoders() -> None:
    fixed = _plan("encoder_decoder")
    assert fixed.fixed_length == 12 and fixed.counts == {"Recurrent": 1, "TailWindow": 1}
    assert len(fixed.frontier) == 2 and not fixed.output_is_seq
    states = _plan("seq2seq_states")  # the encoder's output, h and c feed the decoder
    assert len(states.frontier) == 3 and states.fixed_length is None


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("bidirectional", "Bidirectional"),
        ("pooled_many_to_one", "GlobalAveragePooling1D"),
    ],
)
def test_unsteppable_graphs_name_the_node(name: str, reason: str) -> None:
    with pytest.raises(Unsteppable, match=reason):
        _plan.__wrapped__(name)


def test_a_model_without_sessions_is_a_mapped_core_error() -> None:
    with pytest.raises(Unsupported) as caught:
        build_step_program(dense_one_to_one(), Mode.ONE_TO_ONE)
    assert status_code(caught.value) is grpc.StatusCode.FAILED_PRECONDITION
