"""The encode pipeline, one stage a module: sources (read) -> video, pool (decode) -> batch -> worker
(encode, quantize, pack, write) run by engines; `encode.encode_dataset` is its entry."""
