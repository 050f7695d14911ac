"""Helpers shared by tests of several packages (import as ``tests.helpers.<module>``)."""
