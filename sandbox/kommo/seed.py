"""The deterministic seed the sandbox's Kommo account starts from (``state.py`` holds it).

The seed is the same on every start so tests can name ids:

- users ``10000001`` … (``SANDBOX_USERS``, default 9, Portuguese names, e-mails
  ``@previdas.com.br``): ``10000001`` (Ana Beatriz Carvalho) is the only admin; the last
  user (``10000009`` by default, Mariana Souza Azevedo) is inactive when there are two or
  more. Users added later continue the sequence.
- leads ``9100001`` … (``SANDBOX_LEADS``, default 20); lead ``9100000 + n`` has the main
  contact ``4400000 + n`` whose PHONE is a Brazilian mobile in E.164 (``+55DD9XXXXXXXX``);
  every third contact (``4400003``, ``4400006`` …) has no EMAIL.
- responsible user of lead ``n``: the active non-admin users in turn (``9100001`` →
  ``10000002`` … ``9100007`` → ``10000008``, ``9100008`` → ``10000002`` …), except the last
  lead, which belongs to the inactive user (a vendedor who left the company). A contact has
  its lead's responsible user.
- the "Área" select field (``900002``): ``previdenciario``, ``trabalhista``, ``bpc-loas`` in
  turn, except every fifth lead (``9100005``, ``9100010`` …), which has none and, with the
  reply field empty too, ``custom_fields_values: null``.
- the reply field ("Resposta do bot", textarea, ``SANDBOX_REPLY_FIELD_ID``, default
  ``900001``) is empty on every lead, and so are "Nome do vendedor" (``900010``) and
  "Agendamento" (``900011``), text fields that feed template markers.
- pipeline ``8100001`` with statuses ``71000001`` … ``71000005``, ``142`` (won), ``143`` (lost).
- each lead has one chat: ``chat_id`` a UUID derived from the lead id, ``talk_id`` ``5200 + n``,
  origin ``waba`` (WhatsApp Business). Its customer wrote one hour before the seed was made
  (``customer_last_wrote_at``; no visible message), so WhatsApp's 24-hour window is open for a
  test session; a lead added later (``/_sandbox/lead-event``) has a customer who never wrote.
- chat templates (``SANDBOX_TEMPLATES``, default ``config.DEFAULT_TEMPLATES``): ``501``
  reabrir_conversa, ``502`` boas_vindas_formulario, ``503`` confirmacao_agendamento (approved)
  and ``504`` em_revisao (in review), held by the Salesbots ``7101`` … ``7104``.
"""

from __future__ import annotations

import time
import unicodedata

from sandbox.kommo.config import SandboxConfig
from sandbox.kommo.custom_fields import contact_fields, lead_fields
from sandbox.kommo.ids import (
    FIRST_TEMPLATE_ID,
    PIPELINE_ID,
    SEED_EPOCH,
    STATUS_LOST,
    STATUS_WON,
)
from sandbox.kommo.records import ChatTemplate, Pipeline, Status, Tag
from sandbox.kommo.state import AccountState

# A seeded lead's customer last wrote this long before the seed: the window is open.
SEEDED_CUSTOMER_WROTE_AGO = 3600.0
USER_DOMAIN = "previdas.com.br"

AREAS = ("previdenciario", "trabalhista", "bpc-loas")
_AREA_TITLES = {
    "previdenciario": "Aposentadoria",
    "trabalhista": "Reclamação trabalhista",
    "bpc-loas": "BPC/LOAS",
}

_USER_NAMES = (
    "Ana Beatriz Carvalho",
    "Bruno Henrique Oliveira",
    "Camila Ferreira Santos",
    "Diego Almeida Rocha",
    "Fernanda Lima Costa",
    "Gustavo Ribeiro Martins",
    "Juliana Pereira Gomes",
    "Lucas Mendes Barbosa",
    "Mariana Souza Azevedo",
    "Rafael Teixeira Nunes",
    "Patrícia Moreira Dias",
    "Thiago Cardoso Freitas",
)
_CUSTOMER_FIRST_NAMES = (
    "Maria", "José", "Antônia", "João", "Francisca", "Antônio", "Raimunda", "Francisco",
    "Luzia", "Sebastião", "Terezinha", "Carlos", "Conceição", "Paulo", "Aparecida", "Pedro",
    "Rosângela", "Manoel", "Sônia", "Luiz", "Cícera", "Geraldo", "Marlene", "Benedito",
)  # fmt: skip
_CUSTOMER_LAST_NAMES = (
    "Silva", "Santos", "Oliveira", "Souza", "Rodrigues", "Ferreira", "Alves", "Pereira",
    "Lima", "Gomes", "Costa", "Ribeiro", "Martins", "Carvalho", "Araújo", "Nascimento",
    "Barbosa", "Rocha", "Dias", "Moreira", "Cavalcanti",
)  # fmt: skip
_AREA_CODES = (11, 11, 21, 11, 31, 11, 19, 11, 41, 11, 71, 11, 81, 11, 61)
_EMAIL_DOMAINS = ("gmail.com", "hotmail.com", "outlook.com.br", "yahoo.com.br")
_STATUS_CYCLE = (
    71000002, 71000002, 71000003, 71000001, 71000004,
    71000002, 71000005, 71000003, STATUS_WON, 71000002, STATUS_LOST,
)  # fmt: skip
_PRICES = (0, 1500, 3000, 4500, 0, 2500, 6000)


def _pipeline() -> Pipeline:
    return Pipeline(
        id=PIPELINE_ID,
        name="Funil Previdas",
        statuses=(
            Status(71000001, "Leads de entrada", 10, type=1),
            Status(71000002, "Primeiro contato", 20),
            Status(71000003, "Triagem de documentos", 30),
            Status(71000004, "Análise do caso", 40),
            Status(71000005, "Proposta enviada", 50),
            Status(STATUS_WON, "Contrato fechado", 10000),
            Status(STATUS_LOST, "Perdido", 11000),
        ),
    )


def ascii_slug(text: str) -> str:
    """``"Antônia Araújo"`` → ``"antonia.araujo"``, for e-mail addresses."""
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return ".".join(plain.lower().split())


def mobile_phone(n: int) -> str:
    """A deterministic Brazilian mobile number in E.164 (``+55`` DDD ``9`` + 8 digits)."""
    area_code = _AREA_CODES[(n - 1) % len(_AREA_CODES)]
    # Subscriber numbers of mobiles start with 7, 8 or 9 after the leading 9.
    subscriber = 71000000 + (n * 2718281) % 28999999
    return f"+55{area_code}9{subscriber}"


def seed(config: SandboxConfig, *, now: float | None = None) -> AccountState:
    """The account as it starts; ``now`` (default: the clock) dates the seeded customers'
    last messages, one hour before it."""
    seeded_at = time.time() if now is None else now
    state = AccountState(
        account_id=config.account_id,
        subdomain=config.subdomain,
        name="Previdas",
        users={},
        leads={},
        contacts={},
        lead_fields=lead_fields(config.reply_field_id),
        contact_fields=contact_fields(),
        pipeline=_pipeline(),
        tags=(Tag(50001, "whatsapp"), Tag(50002, "indicação"), Tag(50003, "retorno")),
        templates={template.id: ChatTemplate.seeded(template) for template in config.templates},
    )
    if config.templates:
        state.template_ids.next_id = max(FIRST_TEMPLATE_ID, max(t.id for t in config.templates) + 1)
    for index in range(config.users):
        if index < len(_USER_NAMES):
            name = _USER_NAMES[index]
            first, *_, last = name.split()
            email = f"{ascii_slug(first + ' ' + last)}@{USER_DOMAIN}"
        else:
            name = f"Vendedor {index + 1}"
            email = f"vendedor{index + 1}@{USER_DOMAIN}"
        is_last = index == config.users - 1
        state.add_user(
            name, email, is_admin=index == 0, is_active=not (is_last and config.users >= 2)
        )
    admin = state.admin
    inactive = [user for user in state.users.values() if not user.is_active]
    owners = [user.id for user in state.users.values() if user.is_active and not user.is_admin]
    owners = owners or [admin.id]
    for n in range(1, config.leads + 1):
        first, last = _customer_name(n)
        contact_name = f"{first} {last}"
        area = None if n % 5 == 0 else AREAS[(n - 1) % len(AREAS)]
        is_last_lead = n == config.leads
        responsible = inactive[0].id if is_last_lead and inactive else owners[(n - 1) % len(owners)]
        title = _AREA_TITLES[area] if area else "Consulta"
        contact_email = (
            None if n % 3 == 0 else f"{ascii_slug(contact_name)}@{_EMAIL_DOMAINS[n % 4]}"
        )
        tags = [state.tags[0]] + ([state.tags[1]] if n % 4 == 0 else [])
        lead = state.add_lead(
            name=f"{title} — {contact_name}",
            contact_name=contact_name,
            phone=mobile_phone(n),
            email=contact_email,
            responsible_user_id=responsible,
            status_id=_STATUS_CYCLE[(n - 1) % len(_STATUS_CYCLE)],
            price=_PRICES[(n - 1) % len(_PRICES)],
            area=area,
            tags=tags,
            created_at=SEED_EPOCH + n * 5400,
        )
        state.customer_wrote_at(lead, seeded_at - SEEDED_CUSTOMER_WROTE_AGO)
    return state


def _customer_name(n: int) -> tuple[str, str]:
    """Varied names: first and last names advance at co-prime strides."""
    first = _CUSTOMER_FIRST_NAMES[(n - 1) % len(_CUSTOMER_FIRST_NAMES)]
    last = _CUSTOMER_LAST_NAMES[(n * 5 - 1) % len(_CUSTOMER_LAST_NAMES)]
    return first, last
