"""The ASGI application: Django for pages, the hub under /hubbub, one process.

Run it with ``uvicorn chat_project.asgi:application`` (the hub starts with the
server's lifespan).
"""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chat_project.settings")

from django.conf import settings
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application as django_asgi

from hubbub import ChatMessage, Hub, Namespace
from hubbub.contrib.django import get_asgi_application, has_perm

django_app = django_asgi()
if settings.DEBUG:
    # The admin's CSS and JavaScript, as `runserver` would serve them (development only).
    django_app = ASGIStaticFilesHandler(django_app)

hub = Hub(
    namespaces=[
        # Rooms of the Channels tutorial: any logged-in user, the last 50 messages kept
        # and the last 20 shown on entering.
        Namespace(
            name="chat",
            subscribe="authenticated",
            publish="authenticated",
            history_size=50,
            history_ttl=24 * 3600.0,
            replay=20,
            schema=ChatMessage,
        ),
        # A room for staff only, checked against Django's is_staff at connect time.
        Namespace(
            name="staff",
            can_subscribe=has_perm(staff=True),
            can_publish=has_perm(staff=True),
            history_size=50,
            replay=20,
            schema=ChatMessage,
        ),
    ],
)

application = get_asgi_application(hub, django_app=django_app)
