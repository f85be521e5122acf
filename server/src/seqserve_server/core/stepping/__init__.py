"""Step programs: a model computed a few input steps at a time, for stateful sessions.

Re-running a model on a growing prefix costs O(T) per chunk; a step program carries what the
next steps need so a chunk of k new steps costs O(k) whatever the prefix length.

Terms:
- *step program*: one model's `initial_state`, `step(state, chunk)` and `finish(state)`
  (programs.py). *Incremental* programs step the graph exactly; *recompute* programs keep the
  input prefix and re-run the whole model (the fallback where no exact incremental form exists).
  An incremental program runs as a traced TensorFlow function, or, where every node of its
  graph has one, in numpy from the layer weights (numpy_program.py: ~20x cheaper per step).
- *state*: what a session carries between chunks, named arrays with the batch axis first, so
  sessions stack into one batch (state.py builds every key).
- *aligned* (seq) tensor: one value per input step; its new steps follow from the new input
  steps plus state (per-step layers, recurrent layers, causal Conv1D, elementwise merges).
- *static* tensor: not aligned with the input steps (an RNN's last output, a decoder, a cropped
  tail); recomputed from the state when an output is needed, as the full model would compute it
  had the sequence ended there.
- *frontier*: the static tensors read directly from the state (an RNN's last output and cell
  states, a tail buffer's window); the static part of the graph is evaluated from them.
- *stepped op*: how one aligned node computes its new steps and updates its state (ops.py);
  graph analysis (analysis.py) assigns one to every aligned node or explains why it cannot.

The server uses a program only after it passed the load-time proof (proof.py, applied by
`sessions.proven_program`). Every read of Keras internals, here and in graph.py, is in
keras_internals.py. This package imports no transport (gRPC, protobuf).
"""
