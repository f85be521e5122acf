"""seqserve's wire format, shared by the server and the SDK: `seqserve.v1` (generated) + `tensors`.

Neither side imports the other; both import this package.
"""

MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # the server's default --max-message-bytes, the SDK's too
