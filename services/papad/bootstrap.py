"""papad's accounts on a recorderpi, made or repaired at every start of the papad service
(idempotent): the community group, the recorder's account with the DRF token from the secrets
volume (the recorder registers recordings with it), and an "admin" account whose password is
the secret papad-admin-password (people log in to papad's pages with it and make their own
accounts). Prints one line: what it changed.

Run inside papad's Django environment: python manage.py shell < bootstrap.py
"""

import os
from pathlib import Path

from django.db import transaction
from papadapi.common.models import Group
from papadapi.users.models import User
from rest_framework.authtoken.models import Token

SECRETS = Path(os.environ.get("RECORDERPI_SECRETS", "/run/secrets"))
GROUP = "Community"


def secret(name: str) -> str:
    return (SECRETS / name).read_text().strip()


def account(name: str, password: str | None, *, admin: bool) -> tuple[User, bool]:
    user, made = User.objects.get_or_create(
        username=name, defaults={"first_name": name, "last_name": "recorderpi"})
    if password is None:
        user.set_unusable_password()
    elif made or not user.check_password(password):
        user.set_password(password)
    user.is_staff = user.is_superuser = admin
    user.save()
    return user, made


with transaction.atomic():
    changed = []
    group, made = Group.objects.get_or_create(
        name=GROUP, defaults={"description": "recordings of this community's devices",
                              "is_public": False})
    if made:
        changed.append(f"group {GROUP}")
    admin, made_admin = account("admin", secret("papad-admin-password"), admin=True)
    # The recorder's account signs in with its token only.
    recorder, made_recorder = account("recorder", None, admin=False)
    for user, was_made in ((admin, made_admin), (recorder, made_recorder)):
        group.users.add(user)
        if was_made:
            changed.append(f"user {user.username}")
    key = secret("papad-token")
    if not Token.objects.filter(user=recorder, key=key).exists():
        Token.objects.filter(user=recorder).delete()
        Token.objects.create(user=recorder, key=key)
        changed.append("recorder's token")
print("papad bootstrap:", ", ".join(changed) if changed else "nothing to do",
      f"(group {GROUP} has id {group.pk})")
