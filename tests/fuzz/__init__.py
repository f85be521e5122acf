"""seqserve's own fuzzer: structure-aware, seeded mutations of valid requests for every RPC, run
against a real server while valid traffic beside them is checked against in-process Keras.

`python -m tests.fuzz` (what `make fuzz` runs) starts a server and prints a summary; the test
suite calls `run.fuzz` against its own server. It lives under tests/ because it is a correctness
check that asserts, not a performance measurement (those live in bench/).
"""
