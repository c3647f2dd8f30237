"""Function calls the model can make: a registry, local tools, home devices over MQTT."""
