"""The checks every new password passes, wherever it is set (an invitation's new account, a reset, a change).

The rules are the strictest of the person's organizations' policies (identity/password_history.py): the
minimum length, the breached-passwords list, the history. They run on a short read of their own, before the
unit of work opens its session: the history costs an argon2 verification per remembered password.
"""

from __future__ import annotations

from collections.abc import Iterable

from authz.errors import BadUserInput
from identity.password_history import recent_hashes, record_password, refuse_reuse, rules_for_user
from identity.passwords import PasswordPolicyError, PasswordRules, check_policy
from resolvers.deps import RequestContext
from store.models import User

__all__ = ["record_password", "vet_new_password"]


async def vet_new_password(
    ctx: RequestContext,
    password: str,
    *,
    field: str,
    user: User | None = None,
    email: str | None = None,
    joining: Iterable[str] = (),
) -> PasswordRules:
    """`BAD_USER_INPUT` naming the rule a new password breaks; the rules that applied otherwise. `user` is the
    account whose password it becomes (None: an account about to be made for `email`)."""
    services = ctx.services
    user_id = user.id if user is not None else None
    current_hash = user.password_hash if user is not None else None
    email = user.email if user is not None else email
    async with services.db.transaction() as read:
        rules = await rules_for_user(read, user_id, joining=joining)
        remembered = await recent_hashes(read, user_id, rules.history) if user_id is not None else []
    try:
        check_policy(password, email=email, rules=rules)
        await refuse_reuse(
            services.hasher, password, remembered=remembered, current_hash=current_hash, history=rules.history
        )
    except PasswordPolicyError as exc:
        raise BadUserInput(str(exc), field=field) from None
    return rules
