"""The chat's pages: the lobby form, a room, and the notification form."""

from __future__ import annotations

from django.urls import path

from . import views

app_name = "chat"
urlpatterns = [
    path("", views.index, name="index"),
    path("notify/", views.notify_user, name="notify"),
    path("<slug:room_name>/", views.room, name="room"),
]
