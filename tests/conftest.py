"""Shared fixtures for every test package."""

pytest_plugins = ["tests.fixtures_model"]
