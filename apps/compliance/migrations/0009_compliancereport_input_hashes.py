"""A report's input hashes move out of its JSON content into a table of their own, stored uncompressed.

`SET STORAGE EXTERNAL`: PostgreSQL would otherwise try to compress the 67 MB of a million hashes on every save
(over a second, for nothing: hex does not compress) and could not read a slice without decompressing the whole
value. Raw SQL, since Django has no field option for it; the migration state is unchanged by it.
"""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("compliance", "0008_chaincheckpoint"),
    ]

    operations = [
        migrations.CreateModel(
            name="ComplianceReportInputHashes",
            fields=[
                (
                    "report",
                    models.OneToOneField(
                        on_delete=django.db.models.deletion.CASCADE,
                        primary_key=True,
                        related_name="input_hashes",
                        serialize=False,
                        to="compliance.compliancereport",
                    ),
                ),
                (
                    "hashes",
                    models.BinaryField(help_text="Canonical JSON of the sorted list of distinct input hashes (UTF-8)."),
                ),
            ],
        ),
        migrations.RunSQL(
            sql="ALTER TABLE compliance_compliancereportinputhashes ALTER COLUMN hashes SET STORAGE EXTERNAL",
            reverse_sql=migrations.RunSQL.noop,
        ),
    ]
