"""Triton's protocol (KServe v2) as proto package `seqserve.inference`: generated messages."""
