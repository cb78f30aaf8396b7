"""The fixed ids of the sandbox's Kommo account: where each id sequence starts, the ids of
its seeded fields, pipeline and statuses, and the seed's clock. They are the same on every
start so tests can name them; ``seed.py`` tells what the seed puts under each.
"""

FIRST_USER_ID = 10000001
FIRST_LEAD_ID = 9100001
FIRST_CONTACT_ID = 4400001
FIRST_TALK_ID = 5201
FIRST_NOTE_ID = 60000001
FIRST_TASK_ID = 30000001
FIRST_SUBSCRIPTION_ID = 1001
AREA_FIELD_ID = 900002
PHONE_FIELD_ID = 700001
EMAIL_FIELD_ID = 700002
PIPELINE_ID = 8100001
STATUS_WON = 142
STATUS_LOST = 143
# Fixed so that a restart gives the same created_at/updated_at to every seeded entity.
SEED_EPOCH = 1761955200
# Chat templates created through the API take ids from here on.
FIRST_TEMPLATE_ID = 601
