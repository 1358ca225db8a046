"""Signed messages between controllers."""
