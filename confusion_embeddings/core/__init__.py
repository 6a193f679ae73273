"""Shared plumbing of every stage: errors, params, atomic files, entry points."""
