"""Shared mutable state behind one async interface: a memory and a Redis backend."""
