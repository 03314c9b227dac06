import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("balancer", "0002_pools"),
    ]

    operations = [
        migrations.AlterField(
            model_name="desiredstaterevision",
            name="pool",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.CASCADE,
                related_name="revisions",
                to="balancer.pool",
            ),
        ),
    ]
