"""Pretrained seqserve models (one directory per model) and the code that trains them."""
