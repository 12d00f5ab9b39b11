"""Tests of the northbound MQTT contract."""
