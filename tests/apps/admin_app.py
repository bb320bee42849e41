"""A hub with the admin page on and fast rate samples, for ``python -m hubbub serve admin_app:app``.

Samples every 0.2 s (the default is 5 s) so a test sees the ring buffer fill
within a second or two; 11 samples are kept (a two-second window).
"""

from __future__ import annotations

from hubbub import Hub, HubApp
from hubbub._admin import AdminPage

ADMIN_KEY = "admin-key-for-tests"
API_KEY = "api-key-for-tests"

hub = Hub(anonymous=True)
app = HubApp(hub, api_keys=[API_KEY], admin_key=ADMIN_KEY)
app.admin = AdminPage(hub, key=ADMIN_KEY, sample_interval=0.2, samples_kept=11)
