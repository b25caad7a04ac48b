"""Reading the mail the gateway queued, for tests of the features that send it (invitations, resets).

`last_mail(database_url, "alice@example.com", "invitation")` decrypts the newest message to that
address with the test settings' data key (the default one, as `tests.conftest.make_settings` leaves
it); `token_in(mail)` takes the one-time token out of its link (`...#token=<token>`).
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from gateway.settings import DEV_DATA_KEY
from identity.secrets import SecretBox
from resolvers.mail import ReadMail, read_mailbox
from store.db import Database

MAIL_BOX = SecretBox(DEV_DATA_KEY, purpose="mail")
_TOKEN = re.compile(r"#token=([A-Za-z0-9_.~%-]+)")


async def mails_to(database_url: str, to: str, template: str | None = None, *, limit: int = 50) -> list[ReadMail]:
    """The messages to `to` (of `template`, when given), newest first."""
    db = Database(database_url)
    try:
        async with db.transaction() as session:
            found = await read_mailbox(session, MAIL_BOX, to=to, limit=limit)
    finally:
        await db.dispose()
    return [m for m in found if template is None or m.template == template]


async def last_mail(database_url: str, to: str, template: str | None = None) -> ReadMail:
    found = await mails_to(database_url, to, template)
    assert found, f"no {template or 'mail'} message to {to}"
    return found[0]


def token_in(mail: ReadMail) -> str:
    tokens = {unquote(t) for t in _TOKEN.findall(mail.text)}
    assert len(tokens) == 1, f"expected one token in the {mail.template} message, found {len(tokens)}"
    return tokens.pop()
