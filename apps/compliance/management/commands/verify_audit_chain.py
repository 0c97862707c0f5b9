"""Check every tenant's inference record chain (or one tenant's); exit status 1 if any chain is broken."""

from django.core.management.base import BaseCommand, CommandError
from django_tenants.utils import get_public_schema_name

from apps.compliance.records import chain_verify
from apps.tenants.models import Tenant


class Command(BaseCommand):
    help = "Verify the tamper-evident inference record of every tenant (or of --tenant SLUG)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--tenant", metavar="SLUG", help="verify only this tenant")

    def handle(self, *args, **options) -> None:
        tenants = Tenant.objects.exclude(schema_name=get_public_schema_name()).order_by("schema_name")
        if options["tenant"]:
            tenants = tenants.filter(schema_name=options["tenant"])
            if not tenants.exists():
                raise CommandError(f"no tenant {options['tenant']!r}")
        broken = []
        for tenant in tenants:
            report = chain_verify(schema_name=tenant.schema_name)
            if report.ok:
                self.stdout.write(f"{tenant.schema_name}: ok, {report.checked} records")
            else:
                line = f"{tenant.schema_name}: BROKEN at record {report.first_broken_sequence}: {report.problem}"
                self.stdout.write(line)
                broken.append(line)
        if broken:
            raise CommandError(f"{len(broken)} broken audit chain(s); first: {broken[0]}")
