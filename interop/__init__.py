"""Interop harness: real, independently written clients against quicserve (see README.md)."""
