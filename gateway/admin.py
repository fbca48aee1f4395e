"""The admin: rooms and their history (read-only), room access, and API tokens."""

from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from gateway.devices import SecretNotDeliveredError, add_device, revoke_device
from gateway.models import (
    ApiToken,
    Device,
    Message,
    RetainedState,
    Room,
    RoomGrant,
    RoomPolicy,
)
from gateway.tokens import issue_token, revoke

# ModelAdmin is generic to the type checker only: subscripting it at run time fails.
if TYPE_CHECKING:
    ModelAdmin = admin.ModelAdmin[Any]
else:
    ModelAdmin = admin.ModelAdmin


class ReadOnlyAdmin(ModelAdmin):
    """A list to look at: what the gateway records is not edited by hand."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Room)
class RoomAdmin(ModelAdmin):
    list_display = ("name", "created_at")
    search_fields = ("name",)


@admin.register(RoomPolicy)
class RoomPolicyAdmin(ModelAdmin):
    list_display = ("room", "private", "anonymous", "authenticated")
    list_filter = ("private", "anonymous", "authenticated")
    search_fields = ("room",)


@admin.register(RoomGrant)
class RoomGrantAdmin(ModelAdmin):
    list_display = ("room", "user", "group", "device", "access")
    list_filter = ("access",)
    list_select_related = ("user", "group", "device")
    search_fields = ("room", "user__username", "group__name", "device__name")


@admin.register(Device)
class DeviceAdmin(ModelAdmin):
    list_display = ("name", "is_active", "created_at", "updated_at")
    list_filter = ("is_active",)
    search_fields = ("name",)
    filter_horizontal = ("groups",)
    actions = ("revoke_selected",)

    def get_readonly_fields(
        self, request: HttpRequest, obj: Device | None = None
    ) -> tuple[str, ...]:
        # A device's name is its identity on the broker: renaming would be a new device.
        return () if obj is None else ("name", "created_at", "updated_at")

    def save_model(self, request: HttpRequest, obj: Device, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        try:
            device, secret = add_device(obj.name)
        except SecretNotDeliveredError as exc:
            messages.error(request, str(exc))
            device = Device.objects.get(name=obj.name)
            secret = None
        device.is_active = obj.is_active
        device.save(update_fields=["is_active", "updated_at"])
        obj.pk = device.pk
        obj.refresh_from_db()
        if secret is not None:
            messages.success(
                request,
                f"The device {obj.name!r} connects with user name {obj.name} and secret {secret}"
                " — copy it now: it cannot be shown again.",
            )

    @admin.action(description="Revoke selected devices")
    def revoke_selected(self, request: HttpRequest, queryset: QuerySet[Device]) -> None:
        devices = list(queryset.filter(is_active=True))
        for device in devices:
            revoke_device(device)
        self.message_user(request, f"Revoked {len(devices)} device(s).", messages.SUCCESS)


@admin.register(ApiToken)
class ApiTokenAdmin(ModelAdmin):
    list_display = ("name", "user", "prefix", "created_at", "last_used_at", "revoked_at")
    list_filter = (("revoked_at", admin.EmptyFieldListFilter),)
    list_select_related = ("user",)
    search_fields = ("name", "prefix", "user__username")
    actions = ("revoke_selected",)

    def get_fields(self, request: HttpRequest, obj: ApiToken | None = None) -> tuple[str, ...]:
        # The digest is never shown; the rest is made by issue_token.
        if obj is None:
            return ("name", "user")
        return ("name", "user", "prefix", "created_at", "last_used_at", "revoked_at")

    def get_readonly_fields(
        self, request: HttpRequest, obj: ApiToken | None = None
    ) -> tuple[str, ...]:
        if obj is None:
            return ()
        return ("user", "prefix", "created_at", "last_used_at", "revoked_at")

    def save_model(self, request: HttpRequest, obj: ApiToken, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        token, plaintext = issue_token(obj.user, obj.name)
        # The admin goes on with ``obj`` (its log entry, the redirect): make it the issued row.
        obj.pk = token.pk
        obj.refresh_from_db()
        messages.success(
            request,
            f"The token {obj.name!r} is {plaintext} — copy it now: it cannot be shown again.",
        )

    @admin.action(description="Revoke selected tokens")
    def revoke_selected(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        tokens = list(queryset.filter(revoked_at__isnull=True))
        for token in tokens:
            revoke(token)
        self.message_user(request, f"Revoked {len(tokens)} token(s).", messages.SUCCESS)


@admin.register(RetainedState)
class RetainedStateAdmin(ReadOnlyAdmin):
    list_display = ("room", "topic", "updated_at")
    search_fields = ("room", "topic")


@admin.register(Message)
class MessageAdmin(ReadOnlyAdmin):
    list_display = ("room", "seq", "created_at")
    list_filter = ("room",)
    search_fields = ("room",)
