from django.contrib import admin
from django.urls import include, path, re_path

from protocols import api, ops, views

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
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/", admin.site.urls),
]
