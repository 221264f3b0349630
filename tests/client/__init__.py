"""Tests of the Python SDK and the user commands built on it."""
