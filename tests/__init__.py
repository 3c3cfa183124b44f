"""mqttd's test suite: run with C{python -m pytest} from the project root."""
