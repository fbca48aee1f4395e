import gc

from django.apps import AppConfig


class GatewayConfig(AppConfig):
    name = "gateway"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.db.models.signals import post_migrate

        from gateway import stamps
        from gateway.access import watch_access_changes
        from gateway.conf import gateway_settings

        watch_access_changes()
        # A database emptied or migrated anew: what this process cached from it goes.
        post_migrate.connect(
            lambda **_: stamps.forget_all(), weak=False, dispatch_uid="stamps-forget"
        )
        # The collector's first generation, from Python's 700 allocations: see
        # `GatewaySettings.gc_thresholds`.
        gc.set_threshold(*gateway_settings().gc_thresholds)
