"""The gateway's own MQTT broker, embedded by ``manage.py rungateway`` (see `server`)."""
