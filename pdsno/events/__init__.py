"""Events over MQTT, through the NIB's outbox."""
