"""The suite's helpers live in tests/support/ and register their fixtures as plugins."""
pytest_plugins = ["support.data", "support.mosquitto"]
