"""A stand-in for Kommo CRM that behaves like the real one, unkind parts included.

Run it with ``python -m sandbox.kommo`` (settings: ``SANDBOX_*`` variables, see
``config.py``, which also exports the seeded bot, template and field ids); seeded ids are
listed in ``seed.py`` (the fixed ones exported by ``ids.py``), the account they make up is
``state.py``; the control endpoints tests use are in ``routes_control.py``.
WhatsApp's 24-hour window and template sends are enforced as ``whatsapp.py`` and
``activity.py`` describe; the chat templates API is ``routes_templates.py``.
"""

from sandbox.kommo.app import create_app, sandbox_of
from sandbox.kommo.config import SandboxConfig

__all__ = ["SandboxConfig", "create_app", "sandbox_of"]
