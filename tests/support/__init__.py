"""Test helpers: real infrastructure, per-test isolation, services in-process or as processes."""
