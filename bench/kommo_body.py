"""The webhook body every benchmark request sends: one incoming WhatsApp message, encoded
the way Kommo encodes it (form fields with PHP-style brackets, UTF-8 percent-encoded).

One source for both load generators: wrk's `post.lua` gets the template through the
environment and the open-loop generator imports it, so both sides of every comparison
(and both tools) send byte-for-byte the same workload. The message id is a placeholder:
each request must carry a new one, or the dedupe key turns the bridge's work into a
cheaper "already seen" path.

`python -m bench.kommo_body` prints the template (to run wrk by hand, see README.md).
"""

from __future__ import annotations

import sys
import time
import urllib.parse
import uuid

ID_PLACEHOLDER = "{MESSAGE_ID}"
ENV_VAR = "BENCH_BODY_TEMPLATE"

# A seeded sandbox lead (devstack's Kommo sandbox: lead 9100001, contact 4400001, talk
# 5201, chat uuid5 of the lead) so the event is one the bridge would fully accept.
LEAD_ID = 9100001
CONTACT_ID = 4400001
TALK_ID = 5201
CHAT_ID = str(uuid.uuid5(uuid.UUID("6f0c7a52-3c1e-4c53-9a53-2b8f5d1a0b01"), f"chat-{LEAD_ID}"))
AUTHOR_ID = "5d2f6a0e-7c1b-4a53-9f11-2b6e0c4d8a17"


def body_template(created_at: int | None = None) -> str:
    """The urlencoded body with `ID_PLACEHOLDER` where the message id goes."""
    prefix = "message[add][0]"
    fields = [
        ("account[subdomain]", "previdas"),
        ("account[id]", "30000001"),
        ("account[_links][self]", "https://previdas.kommo.com"),
        (f"{prefix}[id]", ID_PLACEHOLDER),
        (f"{prefix}[chat_id]", CHAT_ID),
        (f"{prefix}[talk_id]", str(TALK_ID)),
        (f"{prefix}[contact_id]", str(CONTACT_ID)),
        (
            f"{prefix}[text]",
            "Olá! Boa tarde, queria saber se tenho direito à aposentadoria por tempo de "
            "contribuição — trabalhei 28 anos com carteira assinada. Obrigada!",
        ),
        (f"{prefix}[created_at]", str(created_at if created_at is not None else int(time.time()))),
        (f"{prefix}[element_type]", "2"),
        (f"{prefix}[element_id]", str(LEAD_ID)),
        (f"{prefix}[entity_type]", "lead"),
        (f"{prefix}[entity_id]", str(LEAD_ID)),
        (f"{prefix}[type]", "incoming"),
        (f"{prefix}[author][id]", AUTHOR_ID),
        (f"{prefix}[author][type]", "external"),
        (f"{prefix}[author][name]", "Maria Conceição Souza"),
        (f"{prefix}[author][avatar_url]", f"https://amojo.kommo.com/avatars/{AUTHOR_ID}.jpg"),
        (f"{prefix}[origin]", "waba"),
        (f"{prefix}[message_type]", "text"),
    ]
    encoded = urllib.parse.urlencode(fields)
    # urlencode escaped the braces of the placeholder: put it back verbatim.
    return encoded.replace(urllib.parse.quote_plus(ID_PLACEHOLDER), ID_PLACEHOLDER)


def lead_template(n: int, text: str, created_at: int | None = None) -> str:
    """The same message for the sandbox's lead number `n` (lead 9100000 + n, its contact,
    talk and chat), for benchmarks that spread messages over many conversations."""
    lead = 9100000 + n
    chat = str(uuid.uuid5(uuid.UUID("6f0c7a52-3c1e-4c53-9a53-2b8f5d1a0b01"), f"chat-{lead}"))
    prefix = "message[add][0]"
    swaps = {
        f"{prefix}[chat_id]": chat,
        f"{prefix}[talk_id]": str(5200 + n),
        f"{prefix}[contact_id]": str(4400000 + n),
        f"{prefix}[element_id]": str(lead),
        f"{prefix}[entity_id]": str(lead),
        f"{prefix}[text]": text,
    }
    fields = urllib.parse.parse_qsl(body_template(created_at), keep_blank_values=True)
    encoded = urllib.parse.urlencode([(k, swaps.get(k, v)) for k, v in fields])
    return encoded.replace(urllib.parse.quote_plus(ID_PLACEHOLDER), ID_PLACEHOLDER)


def body(template: str, message_id: str) -> bytes:
    return template.replace(ID_PLACEHOLDER, message_id, 1).encode()


if __name__ == "__main__":
    sys.stdout.write(body_template() + "\n")
