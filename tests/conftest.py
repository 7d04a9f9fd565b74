pytest_plugins = ["mqttsession.testing.pytest_plugin"]
