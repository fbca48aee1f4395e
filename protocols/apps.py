from django.apps import AppConfig


class ProtocolsConfig(AppConfig):
    name = "protocols"

    def ready(self) -> None:
        from protocols import compat

        compat.install()  # daphne's commands serve with the gateway's server
