"""Data path: template, tokenize, pack; Ray Data wiring."""
