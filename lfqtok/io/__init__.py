"""Bytes in and out: the token shard format (manifest, tars, stats) and the id <-> storage-array codec.

Imports nothing of lfqtok but `errors` and the version: every other folder reads and writes tokens through here."""
