"""Search by input hash (whole or a prefix) in the admin without scanning the record.

`varchar_pattern_ops` serves both `=` and `LIKE 'abc%'`. Raw SQL rather than `AddIndex`: the model's Meta
does not name an opclass index, and the migration state stays as the model describes it.
"""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("compliance", "0005_accessevent_sign_in_reasons"),
    ]

    operations = [
        migrations.RunSQL(
            sql=(
                "CREATE INDEX IF NOT EXISTS compliance_ir_input_sha_idx "
                "ON compliance_inferencerecord (input_sha256 varchar_pattern_ops)"
            ),
            reverse_sql="DROP INDEX IF EXISTS compliance_ir_input_sha_idx",
        ),
    ]
