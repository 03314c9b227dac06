# The desired-state revisions moved to the balancer app (its migration 0001);
# the table stays, only Django's state forgets the model here.

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('inference', '0003_merge_20261127_1111'),
        ('balancer', '0001_initial'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel(name='DesiredStateRevision')],
            database_operations=[],
        ),
    ]
