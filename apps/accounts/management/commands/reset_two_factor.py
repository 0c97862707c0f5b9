"""The operator's way back in for a member who lost both the authenticator app and the recovery codes.

Inside a tenant an owner resets a member's second factor from the members page; this is for the one nobody
there can help: the last owner (or platform staff, with `--schema public`).
"""

import getpass

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django_tenants.utils import tenant_context

from apps.accounts.models import User
from apps.accounts.services import second_factor_reset_by_operator
from apps.tenants.models import Tenant


def _operator_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container's uid may have no name
        return "unknown"


class Command(BaseCommand):
    help = "Remove one member's authenticator app and recovery codes; they enrol again at their next entry."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--schema", required=True, help="the tenant's schema (`public` for platform staff)")
        parser.add_argument("--email", required=True, help="the member's email")
        parser.add_argument("--reason", default="", help="why, such as a support ticket; kept in the audit log")

    def handle(self, *args, **options) -> None:
        tenant = Tenant.objects.filter(schema_name=options["schema"]).first()
        if tenant is None:
            raise CommandError(f"no tenant with schema {options['schema']!r}")
        operator = f"operator {_operator_name()} (manage.py reset_two_factor)"
        if options["reason"]:
            operator = f"{operator}: {options['reason']}"
        with tenant_context(tenant):
            member = User.objects.filter(email__iexact=options["email"].strip()).first()
            if member is None:
                raise CommandError(f"no member {options['email']!r} in schema {tenant.schema_name!r}")
            try:
                removed = second_factor_reset_by_operator(member=member, operator=operator)
            except ValidationError as error:
                raise CommandError(" ".join(error.messages)) from error
        self.stdout.write(
            f"{member.email} in {tenant.schema_name}: removed {removed} device(s); "
            "they set up a new authenticator app at their next entry to the admin."
        )
