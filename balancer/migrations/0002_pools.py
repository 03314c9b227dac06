# Model pools.  Every revision so far becomes the ``default`` pool's history,
# so a database with today's single desired state upgrades in place, its
# revisions kept in order (tests/test_migrations.py).  The column becomes
# NOT NULL in 0003: PostgreSQL refuses to alter a table in the transaction
# that just updated its rows' foreign keys.

import django.db.models.deletion
from django.db import migrations, models


def create_default_pool(apps, schema_editor):
    pool_model = apps.get_model("balancer", "Pool")
    revision_model = apps.get_model("balancer", "DesiredStateRevision")
    default, _ = pool_model.objects.get_or_create(name="default")
    revision_model.objects.filter(pool__isnull=True).update(pool=default)


class Migration(migrations.Migration):
    dependencies = [
        ("balancer", "0001_initial"),
    ]

    operations = [
        migrations.CreateModel(
            name="Pool",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True,
                        primary_key=True,
                        serialize=False,
                        verbose_name="ID",
                    ),
                ),
                ("name", models.CharField(max_length=63, unique=True)),
                ("aliases", models.JSONField(blank=True, default=list)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
            ],
            options={"ordering": ["name"]},
        ),
        migrations.AddField(
            model_name="desiredstaterevision",
            name="pool",
            field=models.ForeignKey(
                null=True,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="revisions",
                to="balancer.pool",
            ),
        ),
        migrations.RunPython(create_default_pool, migrations.RunPython.noop),
    ]
