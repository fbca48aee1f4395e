from django.apps import AppConfig


class ProtocolsConfig(AppConfig):
    name = "protocols"

    def ready(self) -> None:
        from gateway.conf import gateway_settings
        from protocols.daphne_patches import (
            allow_protocol_close_codes,
            hold_to_limit,
            lighten_sockets,
        )

        hold_to_limit(gateway_settings().max_frame_bytes)
        allow_protocol_close_codes()
        lighten_sockets()
