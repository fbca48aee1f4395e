"""No HTTP pages: the baseline serves only its WebSocket."""

urlpatterns: list[object] = []
