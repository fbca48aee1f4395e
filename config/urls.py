from django.contrib import admin
from django.urls import include, path, re_path

from protocols import api, mqtt_hooks, ops, views

urlpatterns = [
    path("", views.index, name="index"),
    path("rooms/<str:room>/", views.room, name="room"),
    path("healthz", ops.healthz, name="healthz"),
    path("readyz", ops.readyz, name="readyz"),
    path("metrics", ops.metrics_view, name="metrics"),
    path("api/openapi.json", api.openapi, name="openapi"),
    path("api/rooms/", api.rooms, name="api-rooms"),
    # Any room text reaches the views, which answer a bad name with a JSON 400.
    re_path(r"^api/rooms/(?P<room>.+)/messages\Z", api.messages, name="api-messages"),
    re_path(r"^api/rooms/(?P<room>.+)/presence\Z", api.presence, name="api-presence"),
    re_path(r"^api/", api.not_found),
    # Brokers that ask the gateway (answered only when MQTT_HOOK_TOKEN is set).
    path("mqtt/emqx/authn", mqtt_hooks.emqx_authn, name="mqtt-emqx-authn"),
    path("mqtt/emqx/authz", mqtt_hooks.emqx_authz, name="mqtt-emqx-authz"),
    path("mqtt/goauth/user", mqtt_hooks.goauth_user, name="mqtt-goauth-user"),
    path("mqtt/goauth/superuser", mqtt_hooks.goauth_superuser, name="mqtt-goauth-superuser"),
    path("mqtt/goauth/acl", mqtt_hooks.goauth_acl, name="mqtt-goauth-acl"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/", admin.site.urls),
]

# Unknown paths get the gateway's own page (the API answers its own, in JSON).
handler404 = "protocols.views.page_not_found"
