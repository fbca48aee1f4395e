from django.apps import AppConfig


class BridgesConfig(AppConfig):
    name = "bridges"

    def ready(self) -> None:
        from django.conf import settings

        if settings.MQTT_AUTH == "dynsec":
            from bridges.dynsec import push_secret
            from gateway.devices import secret_set

            # A new secret goes to the broker at once: the gateway keeps only its hash.
            secret_set.connect(push_secret, dispatch_uid="dynsec-push-secret")
