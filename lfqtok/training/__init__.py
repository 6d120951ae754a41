"""Training the tokenizer itself (`scripts/train_tokenizer.py` drives it)."""
