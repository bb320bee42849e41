"""The chat's views: plain synchronous Django views.

The browser talks to the hub itself (``/hubbub/hubbub.js``); the only server
code that sends anything is :func:`notify_user`, one call to
``hubbub.contrib.django.notify``.
"""

from __future__ import annotations

from django import forms
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from hubbub.contrib.django import notify


@login_required
def index(request: HttpRequest) -> HttpResponse:
    """What chat room would you like to enter? (the Channels tutorial's index page)."""
    return render(request, "chat/index.html")


@login_required
def room(request: HttpRequest, room_name: str) -> HttpResponse:
    """A room: its channel is ``chat:<room_name>``."""
    return render(request, "chat/room.html", {"room_name": room_name})


class NotifyForm(forms.Form):
    user = forms.ModelChoiceField(queryset=get_user_model().objects.order_by("username"))
    message = forms.CharField(max_length=500)


@login_required
def notify_user(request: HttpRequest) -> HttpResponse:
    """Send a notification to another user: a synchronous view, one call, no async_to_sync."""
    sent = None
    if request.method == "POST":
        form = NotifyForm(request.POST)
        if form.is_valid():
            recipient = form.cleaned_data["user"]
            notify(
                recipient.pk,
                {
                    "type": "poke",
                    "title": f"{request.user.get_username()} says",
                    "message": form.cleaned_data["message"],
                },
            )
            sent = recipient.get_username()
            form = NotifyForm()
    else:
        form = NotifyForm()
    return render(request, "chat/notify.html", {"form": form, "sent": sent})
