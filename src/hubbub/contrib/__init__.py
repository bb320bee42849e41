"""Framework integrations: shells above every other layer, each an optional extra.

``hubbub.contrib.django`` (``pip install 'hubbub[django]'``) serves a hub from
a Django project's own ASGI application. Nothing here is imported by
``import hubbub``.
"""
