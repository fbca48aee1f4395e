from django.contrib import admin
from django.urls import path

from protocols import views

urlpatterns = [
    path("", views.index, name="index"),
    path("rooms/<str:room>/", views.room, name="room"),
    path("healthz", views.healthz, name="healthz"),
    path("admin/", admin.site.urls),
]
